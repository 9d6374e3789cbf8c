import { beforeEach, describe, expect, it } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { createApi } from '@/api/client'
import { supplyOf, totalsByUtility, useHousehold, utilityOf, type Meter } from '@/portal/household'

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })
}

const meter = (device: Meter['device']): Meter => ({ meter_id: 'E-1', device, last_reading: null })

describe('supply of a meter', () => {
  it.each([
    [{ online: true, relay: 'closed' }, 'on', 'electricity'],
    [{ online: true, relay: 'open' }, 'off', 'electricity'],
    [{ online: true, valve: 'open' }, 'on', 'water'],
    [{ online: true, valve: 'closed' }, 'off', 'water'],
    [{ online: true, valve: 'moving' }, 'unknown', 'water'],
    [{ online: false, relay: 'open' }, 'offline', 'electricity'],
    [null, 'unknown', 'unknown'],
  ] as const)('%j is %s', (device, supply, utility) => {
    expect(supplyOf(meter(device))).toBe(supply)
    expect(utilityOf(meter(device))).toBe(utility)
  })
})

describe("today's totals", () => {
  it('adds quantities and fen without float drift', () => {
    const buckets = [
      { start: '2026-12-07T00:00:00+08:00', utility: 'electricity', quantity: '0.1', unit: 'kWh', cost: '0.10' },
      { start: '2026-12-07T01:00:00+08:00', utility: 'electricity', quantity: '0.2', unit: 'kWh', cost: '0.20' },
      { start: '2026-12-07T01:00:00+08:00', utility: 'water', quantity: '0.05', unit: 'm³', cost: '0.19' },
    ]
    const totals = totalsByUtility(buckets)
    expect(totals.electricity?.cost).toBe(0.3)
    expect(totals.electricity?.quantity).toBeCloseTo(0.3, 10)
    expect(totals.water).toEqual({ quantity: 0.05, cost: 0.19 })
  })
})

describe('household store', () => {
  let answers: Record<string, unknown>
  let asked: string[]

  beforeEach(() => {
    setActivePinia(createPinia())
    asked = []
    answers = {
      '/v1/me': { tenant_id: 'T-1', accounts: ['A101'], rooms: ['A101'], meters: ['E-1', 'W-1'] },
      '/v1/me/accounts': [
        { account_id: 'A101', name: '张三', balance: '-0.10', available: '-0.10', available_exact: '-0.1', level: 'exhausted', sequence: 4 },
      ],
      '/v1/me/meters': [
        { meter_id: 'E-1', device: { meter_id: 'E-1', online: true, relay: 'open' }, last_reading: null },
        { meter_id: 'W-1', device: { meter_id: 'W-1', online: true, valve: 'closed' }, last_reading: null },
      ],
      '/v1/me/accounts/A101/usage/today': { granularity: 'hour', buckets: [] },
      '/v1/me/alarms': {
        items: [{ alarm_id: 'a1', alarm_type: 'leak', severity: 'critical', state: 'active', message_zh: '疑似漏水', message_en: 'Suspected leak', raised_at: '2026-12-07T08:00:00Z' }],
        next_cursor: null,
      },
    }
  })

  const api = () =>
    createApi(async (request) => {
      const path = new URL((request as Request).url).pathname
      asked.push(path)
      return path in answers ? json(answers[path]) : json({ status: 404, title: 'Not Found' }, 404)
    }, 'http://portal.test')

  it('loads balances, meters and today, and sees the cut-off', async () => {
    const household = useHousehold()
    await household.load(api())
    expect(household.tenantId).toBe('T-1')
    expect(household.worstLevel).toBe('exhausted')
    expect(household.cutOff).toBe(true)
    expect(household.today).toEqual({ A101: [] })
    expect(household.activeAlarms.map((a) => a.message_zh)).toEqual(['疑似漏水'])
  })

  it('applies live meter states at once and re-reads balances on a newer balance event', async () => {
    const household = useHousehold()
    await household.load(api())
    expect(household.apply({ kind: 'meter_state', data: { meter_id: 'E-1', online: true, relay: 'closed' } })).toBeNull()
    expect(household.apply({ kind: 'meter_state', data: { meter_id: 'W-1', online: true, valve: 'open' } })).toBeNull()
    expect(household.cutOff).toBe(false)
    expect(household.apply({ kind: 'balance', data: { account_id: 'A101', level: 'ok', sequence: 3 } })).toBe('accounts')
    expect(household.accounts[0]?.level).toBe('exhausted') // an older event changes nothing shown
    household.apply({ kind: 'balance', data: { account_id: 'A101', level: 'ok', sequence: 5 } })
    expect(household.accounts[0]?.level).toBe('ok')
    expect(household.apply({ kind: 'ready', data: { resumed: false } })).toBe('all')
    expect(household.apply({ kind: 'ready', data: { resumed: true } })).toBeNull()
    expect(household.apply({ kind: 'alarm', data: { alarm_id: 'a2' } })).toBe('alarms')
    expect(household.alarmsSeen).toBe(1)
  })

  it('shows the balance even when today and the alarms are not available', async () => {
    delete answers['/v1/me/accounts/A101/usage/today']
    delete answers['/v1/me/alarms']
    const household = useHousehold()
    await household.load(api())
    expect(household.accounts).toHaveLength(1)
    expect(household.loaded).toBe(true)
  })
})
