// What the console offers: each page and the action (policy.py on the gateway) it needs. The
// navigation shows a page only to a role that has its action; the gateway refuses the rest anyway.
export interface Page {
  name: string
  path: string
  action: string
  icon: string
}

export const PAGES: readonly Page[] = [
  { name: 'overview', path: '/', action: 'premises:read', icon: 'DataBoard' },
  { name: 'cash', path: '/cash', action: 'topups:create', icon: 'Wallet' },
  { name: 'rooms', path: '/rooms', action: 'premises:read', icon: 'House' },
  { name: 'devices', path: '/devices', action: 'devices:read', icon: 'Cpu' },
  { name: 'commands', path: '/commands', action: 'commands:read', icon: 'Switch' },
  { name: 'alarms', path: '/alarms', action: 'alarms:read', icon: 'Bell' },
  { name: 'billing', path: '/billing', action: 'tariffs:read', icon: 'Setting' },
  { name: 'reports', path: '/reports', action: 'reports:read', icon: 'TrendCharts' },
]

/** The pages a principal with these actions may open, in menu order. */
export function pagesFor(actions: readonly string[]): Page[] {
  return PAGES.filter((page) => actions.includes(page.action))
}

/** Where a role starts: its first page (a cashier lands on the counter, maintenance on devices). */
export function homeFor(role: string, actions: readonly string[]): string {
  const start: Record<string, string> = { cashier: '/cash', maintenance: '/alarms' }
  return start[role] ?? pagesFor(actions)[0]?.path ?? '/'
}
