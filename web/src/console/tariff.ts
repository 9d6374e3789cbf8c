// The tariff editor's model: what a manager types, checked against the gateway's own rules before
// it is sent (the gateway checks again), and a rough monthly estimate for a typical household.
// The estimate is only a preview: billing prices real consumption hour by hour; the gateway has no
// preview route yet, so the console shows this clearly labelled as an estimate.
import type { Schemas } from '@/api/client'

export type Component = Schemas['TariffVersionIn']['components'][number]
export type Flat = Schemas['FlatIn']
export type Tou = Schemas['TouIn']
export type Tiered = Schemas['TieredIn']
export type Fixed = Schemas['FixedIn']

export const PRICE = /^(0|[1-9][0-9]{0,3})(\.[0-9]{1,6})?$/
export const WIDTH = /^(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?$/
export const FEE = /^(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?$/
export const CLOCK = /^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$/

/** A problem with a component: the message key and where (for the form to show it beside the field). */
export interface Problem {
  key: string
  at: string
}

export function validate(components: Component[]): Problem[] {
  const problems: Problem[] = []
  if (components.length === 0) problems.push({ key: 'console.tariff.needComponent', at: 'components' })
  if (components.filter((c) => c.kind !== 'fixed').length !== 1) {
    problems.push({ key: 'console.tariff.onePricing', at: 'components' })
  }
  components.forEach((c, i) => {
    const at = (field: string) => `${i}.${field}`
    if (c.kind === 'flat' && !PRICE.test(c.unit_price)) problems.push({ key: 'console.tariff.badPrice', at: at('unit_price') })
    if (c.kind === 'fixed' && !FEE.test(c.amount_per_month)) problems.push({ key: 'console.tariff.badFee', at: at('amount_per_month') })
    if (c.kind === 'tiered') {
      c.blocks.forEach((b, j) => {
        if (!PRICE.test(b.unit_price)) problems.push({ key: 'console.tariff.badPrice', at: at(`blocks.${j}.unit_price`) })
        const last = j === c.blocks.length - 1
        if (last && b.width != null && b.width !== '') problems.push({ key: 'console.tariff.lastOpen', at: at(`blocks.${j}.width`) })
        if (!last && !(b.width && WIDTH.test(b.width) && Number(b.width) > 0)) {
          problems.push({ key: 'console.tariff.badWidth', at: at(`blocks.${j}.width`) })
        }
      })
    }
    if (c.kind === 'tou') {
      const labels = new Set(c.rates.map((r) => r.label))
      c.rates.forEach((r, j) => {
        if (!PRICE.test(r.unit_price)) problems.push({ key: 'console.tariff.badPrice', at: at(`rates.${j}.unit_price`) })
      })
      c.segments.forEach((s, j) => {
        if (!CLOCK.test(s.start)) problems.push({ key: 'console.tariff.badClock', at: at(`segments.${j}.start`) })
        if (!labels.has(s.rate)) problems.push({ key: 'console.tariff.unknownRate', at: at(`segments.${j}.rate`) })
      })
      const starts = c.segments.map((s) => s.start.slice(0, 5))
      if (new Set(starts).size !== starts.length) problems.push({ key: 'console.tariff.duplicateStart', at: at('segments') })
    }
  })
  return problems
}

/** Hours of the day each rate covers: segments start at their time and run to the next one's. */
export function hoursPerRate(tou: Tou): Map<string, number> {
  const minutes = (s: string) => Number(s.slice(0, 2)) * 60 + Number(s.slice(3, 5))
  const sorted = [...tou.segments].sort((a, b) => minutes(a.start) - minutes(b.start))
  const hours = new Map<string, number>()
  sorted.forEach((segment, i) => {
    const next = sorted[(i + 1) % sorted.length]!
    let span = minutes(next.start) - minutes(segment.start)
    if (span <= 0) span += 24 * 60
    if (sorted.length === 1) span = 24 * 60
    hours.set(segment.rate, (hours.get(segment.rate) ?? 0) + span / 60)
  })
  return hours
}

export interface Estimate {
  lines: { label: string; amount: number }[]
  total: number
}

/** A month's bill for `quantity` (kWh or m³) used evenly over the day by a household of `people`. */
export function estimate(components: Component[], quantity: number, people: number): Estimate {
  const lines: Estimate['lines'] = []
  for (const c of components) {
    if (c.kind === 'flat') lines.push({ label: c.name ?? 'flat', amount: quantity * Number(c.unit_price) })
    if (c.kind === 'fixed') lines.push({ label: c.name ?? 'fixed', amount: Number(c.amount_per_month) })
    if (c.kind === 'tou') {
      const hours = hoursPerRate(c)
      for (const rate of c.rates) {
        lines.push({ label: rate.label, amount: (quantity * (hours.get(rate.label) ?? 0)) / 24 * Number(rate.unit_price) })
      }
    }
    if (c.kind === 'tiered') {
      let left = quantity
      const extraPeople = Math.max(0, people - (c.base_household_size ?? people))
      for (const block of c.blocks) {
        const width = block.width == null || block.width === '' ? Infinity : Number(block.width) + extraPeople * Number(block.extra_width_per_person ?? 0)
        const used = Math.min(left, width)
        lines.push({ label: block.label, amount: used * Number(block.unit_price) })
        left -= used
        if (left <= 0) break
      }
    }
  }
  const rounded = lines.map((l) => ({ ...l, amount: Math.round(l.amount * 100) / 100 }))
  return { lines: rounded, total: Math.round(rounded.reduce((sum, l) => sum + l.amount, 0) * 100) / 100 }
}

/** A new component of a kind, with the fields a person fills in. */
export function blank(kind: Component['kind']): Component {
  switch (kind) {
    case 'flat':
      return { kind, name: 'flat', unit_price: '' }
    case 'fixed':
      return { kind, name: 'service_fee', amount_per_month: '' }
    case 'tiered':
      return {
        kind,
        name: 'tiered',
        period: 'month',
        blocks: [
          { label: '第一档', width: '', unit_price: '' },
          { label: '第二档', width: null, unit_price: '' },
        ],
      }
    case 'tou':
      return {
        kind,
        name: 'tou',
        rates: [
          { label: '峰', unit_price: '' },
          { label: '平', unit_price: '' },
          { label: '谷', unit_price: '' },
        ],
        segments: [
          { start: '08:00', rate: '峰' },
          { start: '12:00', rate: '平' },
          { start: '17:00', rate: '峰' },
          { start: '21:00', rate: '平' },
          { start: '23:00', rate: '谷' },
        ],
      }
  }
}
