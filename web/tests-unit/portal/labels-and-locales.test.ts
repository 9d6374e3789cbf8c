import { describe, expect, it } from 'vitest'
import { messageKeys } from '@/shared/i18n'
import { chargeLabel, rateLabel, unitOf } from '@/portal/labels'
import { validAmount } from '@/portal/topup'
import zh from '@/portal/locales/zh-CN'
import en from '@/portal/locales/en'

/** A translator over the zh-CN portal texts, as vue-i18n would do it. */
function t(key: string, values: Record<string, unknown> = {}): string {
  const found = key
    .replace(/^portal\./, '')
    .split('.')
    .reduce<unknown>((node, part) => (node as Record<string, unknown>)?.[part], zh)
  return String(found).replace(/\{(\w+)\}/g, (_, name: string) => String(values[name]))
}

describe('portal texts', () => {
  it('are complete in English', () => {
    expect(messageKeys(en).sort()).toEqual(messageKeys(zh).sort())
  })
})

describe('tariff lines in a tenant’s words', () => {
  it.each([
    ['peak', '峰'],
    ['峰', '峰'],
    ['valley', '谷'],
    ['sharp', '尖'],
    ['flat', '平'],
    ['tier1', '第1档'],
    ['二档', '第2档'],
    ['夏季', '夏季'],
  ])('%s is %s', (label, shown) => {
    expect(rateLabel(label, t)).toBe(shown)
  })

  it.each([
    ['flat', 'flat', '单一价格'],
    ['污水处理费', '污水处理费', '污水处理费'],
    ['tou', 'peak', '峰'],
    ['阶梯水价', '一档', '阶梯水价 · 第1档'],
  ])('%s/%s is %s', (component, label, shown) => {
    expect(chargeLabel(component, label, t)).toBe(shown)
  })
})

describe('units on a bill', () => {
  it('are 度 for electricity and 吨 for water', () => {
    expect([unitOf('electricity', t), unitOf('water', t)]).toEqual(['度', '吨'])
  })
})

describe('top-up amounts', () => {
  it.each(['50', '0.01', '12.3', '99999.99'])('%s is accepted', (amount) => expect(validAmount(amount)).toBe(true))
  it.each(['0', '0.00', '-5', '1.234', '100000', '05', 'abc', ''])('%s is refused', (amount) =>
    expect(validAmount(amount)).toBe(false),
  )
})
