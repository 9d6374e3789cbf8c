import { describe, expect, it } from 'vitest'
import { homeFor, pagesFor } from '@/console/nav'

// The actions of each demo role, as the gateway's policy table grants them (docs/api.md).
const ACTIONS: Record<string, string[]> = {
  cashier: ['accounts:read', 'commands:read', 'premises:read', 'tariffs:read', 'topups:create'],
  maintenance: ['alarms:read', 'alarms:write', 'commands:close', 'commands:read', 'devices:read', 'devices:write', 'premises:read'],
  finance: ['accounts:read', 'billing:run', 'commands:read', 'corrections:create', 'premises:read', 'reports:read', 'tariffs:read', 'tariffs:write', 'topups:create'],
}

describe('navigation follows the role', () => {
  it('a cashier sees the counter and rooms, never devices, alarms or reports', () => {
    const names = pagesFor(ACTIONS.cashier!).map((p) => p.name)
    expect(names).toEqual(['overview', 'cash', 'rooms', 'commands', 'billing'])
    expect(homeFor('cashier', ACTIONS.cashier!)).toBe('/cash')
  })
  it('maintenance sees devices, commands and alarms and starts at the alarms', () => {
    const names = pagesFor(ACTIONS.maintenance!).map((p) => p.name)
    expect(names).toEqual(['overview', 'rooms', 'devices', 'commands', 'alarms'])
    expect(homeFor('maintenance', ACTIONS.maintenance!)).toBe('/alarms')
  })
  it('finance gets reports and starts at the overview', () => {
    expect(pagesFor(ACTIONS.finance!).map((p) => p.name)).toContain('reports')
    expect(homeFor('finance', ACTIONS.finance!)).toBe('/')
  })
})
