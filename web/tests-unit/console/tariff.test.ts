import { describe, expect, it } from 'vitest'
import { blank, estimate, hoursPerRate, validate, type Component, type Tou } from '@/console/tariff'

const keys = (components: Component[]) => validate(components).map((p) => `${p.at}:${p.key.split('.').pop()}`)

describe('validate', () => {
  it('a flat price with a service fee is fine', () => {
    expect(keys([{ kind: 'flat', unit_price: '0.5883' }, { kind: 'fixed', amount_per_month: '5.00' }])).toEqual([])
  })
  it.each(['', '0.1234567', '-1', '1e3', '12345'])('the price %j is refused', (price) => {
    expect(keys([{ kind: 'flat', unit_price: price }])).toEqual(['0.unit_price:badPrice'])
  })
  it('exactly one pricing component (flat, tou or tiered)', () => {
    expect(keys([{ kind: 'fixed', amount_per_month: '5' }])).toContain('components:onePricing')
    expect(keys([{ kind: 'flat', unit_price: '1' }, { kind: 'flat', unit_price: '2' }])).toContain('components:onePricing')
  })
  it('tiers: every block but the last has a width, the last is open-ended', () => {
    const tiered: Component = { kind: 'tiered', blocks: [{ label: '一', width: '', unit_price: '0.5' }, { label: '二', width: '100', unit_price: '0.6' }] }
    expect(keys([tiered])).toEqual(['0.blocks.0.width:badWidth', '0.blocks.1.width:lastOpen'])
  })
  it('time of use: segments name known rates, at valid distinct times', () => {
    const tou = blank('tou') as Tou
    tou.rates.forEach((r) => (r.unit_price = '0.5'))
    expect(keys([tou])).toEqual([])
    tou.segments.push({ start: '24:00', rate: '尖' }, { start: '08:00', rate: '峰' })
    expect(keys([tou])).toEqual(['0.segments.5.start:badClock', '0.segments.5.rate:unknownRate', '0.segments:duplicateStart'])
  })
})

describe('estimate', () => {
  it('flat: quantity × price, plus the fixed fee', () => {
    const e = estimate([{ kind: 'flat', unit_price: '0.6' }, { kind: 'fixed', name: 'service_fee', amount_per_month: '5' }], 150, 3)
    expect(e.total).toBe(95)
  })
  it('tiers fill in order; wider blocks for a household above the base size', () => {
    const tiered: Component = {
      kind: 'tiered',
      base_household_size: 2,
      blocks: [
        { label: '第一档', width: '100', unit_price: '0.5', extra_width_per_person: '50' },
        { label: '第二档', width: null, unit_price: '0.8' },
      ],
    }
    expect(estimate([tiered], 200, 2).lines).toEqual([{ label: '第一档', amount: 50 }, { label: '第二档', amount: 80 }])
    expect(estimate([tiered], 200, 3).total).toBe(75 + 40)
  })
  it('time of use: each rate gets its share of the day', () => {
    const tou = blank('tou') as Tou
    expect(Object.fromEntries(hoursPerRate(tou))).toEqual({ 峰: 8, 平: 7, 谷: 9 })
    tou.rates = [{ label: '峰', unit_price: '1' }, { label: '平', unit_price: '0.5' }, { label: '谷', unit_price: '0.25' }]
    expect(estimate([tou], 240, 1).total).toBe(80 + 35 + 22.5)
  })
})
