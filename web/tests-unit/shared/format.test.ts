import { describe, expect, it } from 'vitest'
import { localTime, quantity, toCsv, yuan } from '@/shared/format'

describe('yuan', () => {
  it.each([
    ['12.3', '¥12.30'],
    ['1234567.891', '¥1,234,567.89'],
    ['-0.004', '¥0.00'],
    ['-5.129', '-¥5.12'],
    ['0', '¥0.00'],
    [null, '—'],
  ])('%s is shown as %s (cut toward zero, never -0.00)', (amount, shown) => {
    expect(yuan(amount)).toBe(shown)
  })
})

describe('localTime', () => {
  it('shows an instant in Asia/Shanghai', () => {
    expect(localTime('2026-12-07T16:30:00Z')).toBe('2026-12-08 00:30')
    expect(localTime('2026-12-07T16:30:05Z', true)).toBe('2026-12-08 00:30:05')
  })
})

describe('quantity', () => {
  it('names the unit of each utility', () => {
    expect(quantity('1.5', 'electricity')).toBe('1.5 kWh')
    expect(quantity('2', 'water')).toBe('2 m³')
  })
})

describe('toCsv', () => {
  it('quotes and neutralises formulas, but keeps negative numbers', () => {
    expect(toCsv([['a,b', '=SUM(A1)', '-3.06', 'say "hi"']])).toBe('"a,b",\'=SUM(A1),-3.06,"say ""hi"""\r\n')
  })
})
