// What the tenant's household looks like right now: balances, meters and their supply, today's
// usage. Read from /v1/me/… and kept current by the live push; a balance or alarm event makes the
// affected figures re-read (the event's own numbers are one purse's, not the account's).
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { unwrap, type Api, type Schemas } from '@/api/client'
import type { LiveFrame } from './live'

export type Balance = Schemas['BalanceOut']
export type Level = 'ok' | 'low_1' | 'low_2' | 'exhausted'
export type Supply = 'on' | 'off' | 'unknown' | 'offline'

export interface DeviceState {
  meter_id?: string
  online?: boolean
  relay?: 'closed' | 'open' | 'unknown' | null
  valve?: 'open' | 'closed' | 'moving' | 'abnormal' | 'unknown' | null
  keep_power?: boolean | null
  last_reading_at?: string | null
}

export interface Meter {
  meter_id: string
  device: DeviceState | null
  last_reading: Record<string, unknown> | null
}

export interface UsageBucket {
  start: string
  utility: 'electricity' | 'water' | string
  quantity: string
  unit: string
  cost: string
  cost_exact?: string
  hours?: number
}

export interface Alarm {
  alarm_id: string
  alarm_type: string
  severity: 'info' | 'warning' | 'major' | 'critical'
  state: 'active' | 'acknowledged' | 'cleared'
  message_zh: string
  message_en: string
  raised_at: string
}

export interface UsageHistory {
  granularity: 'hour' | 'day' | 'month'
  timezone: string
  start: string
  end: string
  buckets: UsageBucket[]
}

/** The utility a meter supplies: a relay switches electricity, a valve water. */
export function utilityOf(meter: Meter): 'electricity' | 'water' | 'unknown' {
  if (meter.device?.relay) return 'electricity'
  if (meter.device?.valve) return 'water'
  return 'unknown'
}

/** Whether the meter lets supply through: closed relay / open valve is on. */
export function supplyOf(meter: Meter): Supply {
  const device = meter.device
  if (!device) return 'unknown'
  if (device.online === false) return 'offline'
  if (device.relay) return device.relay === 'closed' ? 'on' : device.relay === 'open' ? 'off' : 'unknown'
  if (device.valve) return device.valve === 'open' ? 'on' : device.valve === 'closed' ? 'off' : 'unknown'
  return 'unknown'
}

/** Today's quantity and cost per utility (sums of the hourly buckets, in fen as the API gives them). */
export function totalsByUtility(buckets: readonly UsageBucket[]): Record<string, { quantity: number; cost: number }> {
  const totals: Record<string, { quantity: number; cost: number }> = {}
  for (const bucket of buckets) {
    const total = (totals[bucket.utility] ??= { quantity: 0, cost: 0 })
    total.quantity += Number(bucket.quantity)
    // Fen as integers, so a sum of 0.1 + 0.2 stays 0.30.
    total.cost = Math.round(total.cost * 100 + Math.round(Number(bucket.cost) * 100)) / 100
  }
  return totals
}

export const useHousehold = defineStore('portal-household', () => {
  const tenantId = ref<string | null>(null)
  const accounts = ref<Balance[]>([])
  const meters = ref<Meter[]>([])
  const today = ref<Record<string, UsageBucket[]>>({})
  const alarmsSeen = ref(0)
  const activeAlarms = ref<Alarm[]>([])
  const live = ref(false)
  const loaded = ref(false)

  const worstLevel = computed<Level>(() => {
    const order: Level[] = ['ok', 'low_1', 'low_2', 'exhausted']
    return accounts.value.reduce<Level>((worst, a) => {
      const level = (order.includes(a.level as Level) ? a.level : 'ok') as Level
      return order.indexOf(level) > order.indexOf(worst) ? level : worst
    }, 'ok')
  })
  const cutOff = computed(() => meters.value.some((m) => supplyOf(m) === 'off'))

  async function loadAccounts(api: Api): Promise<void> {
    accounts.value = unwrap(await api.GET('/v1/me/accounts'))
  }

  async function loadMeters(api: Api): Promise<void> {
    meters.value = unwrap(await api.GET('/v1/me/meters')) as Meter[]
  }

  async function loadToday(api: Api): Promise<void> {
    const found = await Promise.all(
      accounts.value.map(async (a) => {
        const result = await api.GET('/v1/me/accounts/{account_id}/usage/today', {
          params: { path: { account_id: a.account_id } },
        })
        return [a.account_id, (unwrap(result) as unknown as UsageHistory).buckets ?? []] as const
      }),
    )
    today.value = Object.fromEntries(found)
  }

  async function loadAlarms(api: Api): Promise<void> {
    const page = unwrap(await api.GET('/v1/me/alarms', { params: { query: { state: 'active', limit: 5 } } }))
    activeAlarms.value = page.items as Alarm[]
  }

  async function load(api: Api): Promise<void> {
    const me = unwrap(await api.GET('/v1/me'))
    tenantId.value = me.tenant_id
    await Promise.all([loadAccounts(api), loadMeters(api)])
    // Today's usage and open alarms are read after the balance and never hold it up.
    await Promise.all([loadToday(api).catch(() => undefined), loadAlarms(api).catch(() => undefined)])
    loaded.value = true
  }

  /** Apply one live frame; returns what should be re-read. */
  function apply(frame: LiveFrame): 'accounts' | 'alarms' | 'all' | null {
    if (frame.kind === 'ready') return frame.data.resumed === true ? null : 'all'
    if (frame.kind === 'meter_state') {
      const state = frame.data as DeviceState
      const meter = meters.value.find((m) => m.meter_id === state.meter_id)
      if (meter) meter.device = { ...meter.device, ...state }
      return null
    }
    if (frame.kind === 'balance') {
      const event = frame.data as { account_id?: string; level?: string; sequence?: number }
      const account = accounts.value.find((a) => a.account_id === event.account_id)
      if (account && typeof event.level === 'string' && (event.sequence ?? 0) > account.sequence) {
        account.level = event.level // shown at once; the figures follow from the re-read
      }
      return 'accounts'
    }
    alarmsSeen.value += 1
    return 'alarms'
  }

  function reset(): void {
    tenantId.value = null
    accounts.value = []
    meters.value = []
    today.value = {}
    activeAlarms.value = []
    loaded.value = false
  }

  return {
    tenantId,
    accounts,
    meters,
    today,
    alarmsSeen,
    activeAlarms,
    live,
    loaded,
    worstLevel,
    cutOff,
    load,
    loadAccounts,
    loadMeters,
    loadToday,
    loadAlarms,
    apply,
    reset,
  }
})
