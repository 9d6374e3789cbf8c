// The reports the console reads (the gateway documents them as "an object"; fields as billing and the
// collector answer them), and the instants that bound "today" and "this month" in local time.
import { localDate } from '@/shared/format'

export interface Money4 {
  payments: string
  refunds: string
  corrections: string
  net: string
  count: number
}
export interface Revenue {
  days: (Money4 & { day: string; channel: string })[]
  channels: (Money4 & { channel: string; channel_zh: string })[]
  total: Money4
  summary_zh: string
  summary_en: string
}
export interface ConsumptionRow {
  building_name: string | null
  utility: 'electricity' | 'water'
  unit: string
  meters: number
  quantity: string
  cost: string
}
export interface Consumption {
  rows: ConsumptionRow[]
  totals: ConsumptionRow[]
  summary_zh: string
  summary_en: string
}
export interface OnlineRate {
  total: { meters: number; online: number; online_rate: string; availability: string }
  gateways: { gateway_id: string; meters: number; online: number; online_rate: string; availability: string }[]
}
export interface CollectionRate {
  total: { billable: string; collected: string; subsidies: string; collection_rate_percent: string | null; households_billed: number; households_paid: number }
  summary_zh: string
  summary_en: string
}
export interface ArrearsRow {
  account_id: string
  [field: string]: unknown
}

/** Local midnight today and on the first of this month, as aware ISO instants (+08:00). */
export function periodStarts(now: Date = new Date()): { today: string; month: string } {
  const day = localDate(now)
  return { today: `${day}T00:00:00+08:00`, month: `${day.slice(0, 8)}01T00:00:00+08:00` }
}
