// Rows the console reads whose backend routes the gateway documents as "an object" for now
// (docs/api.md); field names as the backends answer them. Typed here once, used by the pages.
export interface Page<T> {
  items: T[]
  next_cursor: string | null
}

export type Level = 'ok' | 'low_1' | 'low_2' | 'exhausted'

export interface RoomRow {
  room_id: string
  code: string
  estate_id: string
  building_id: string
  building_name: string
  floor: number
  area_m2: string
  household_size: number
  occupied: boolean
  lease_id: string | null
  tenant_id: string | null
  tenant_name: string | null
  account_id: string | null
  level: Level | null
}

export interface Purse {
  purse: string
  paid: string
  subsidy: string
  pending: string
  available: string
}

export interface Account {
  account_id: string
  name: string
  estate_id: string | null
  balance: string
  available: string
  level: Level
  grace_credit: string
  purses: Purse[]
}

export interface LedgerEntry {
  entry_id: number
  txn_id: string
  amount: string
  kind: string
  meter_id: string | null
  memo: string | null
  reverses: string | null
  created_at: string
}

export interface Payment {
  payment_id: string
  account_id: string
  channel: string
  amount: string
  refunded: string
  state: string
  reference: string | null
  balance_after: string | null
  created_at: string
}

export interface PaymentAccepted {
  payment_id: string
  account_id: string
  amount: string
  channel: string
  reference: string | null
  balance_after: string
  txn_id: string
}

export interface Receipt {
  receipt_no: string
  counter_id: string
  shift_id: string
  issued_at: string
  payment: PaymentAccepted
}

export interface Shift {
  shift_id: string
  counter_id: string
  cashier: string
  opened_at: string
  closed_at: string | null
  opening_float: string
  receipt_count: number
  takings: string
  expected_cash: string
  counted_cash: string | null
  difference: string | null
  receipts: { receipt_no: string; amount: string; account_id: string; payment_id: string; issued_at: string }[]
}

export interface MeterState {
  meter_id: string
  gateway_id: string | null
  online: boolean
  reason: string | null
  relay: string | null
  valve: string | null
  keep_power: boolean
  last_reading_at: string | null
  updated_at: string | null
}

export interface Command {
  command_id: string
  meter_id: string
  kind: string
  state: string
  origin: string
  reason: string
  actor: string
  account_id: string | null
  created_at: string
  updated_at: string
  expires_at: string | null
  detail: string | null
  attempt: number
}

export interface Alarm {
  alarm_id: string
  source_id: string
  alarm_type: string
  severity: 'info' | 'warning' | 'major' | 'critical'
  state: string
  message_zh: string
  message_en: string
  occurrences: number
  meter_id: string | null
  estate: string | null
  building: string | null
  room: string | null
  raised_at: string
  last_seen_at: string
  acknowledged_at: string | null
  acknowledged_by: string | null
  cleared_at: string | null
}

export interface WorkOrder {
  work_order_id: string
  device_id: string
  fault_type: string
  status: string
  assignee: string | null
  description?: string
  estate: string | null
  building: string | null
  opened_at?: string
  created_at?: string
  updated_at?: string
}

export interface TariffVersion {
  tariff_id: number
  utility: string
  effective_from: string
  components: Record<string, unknown>[]
}
