// New alarms while the console is open. Staff have no live stream on the gateway (its live push,
// /v1/me/live, is for tenants), so the console asks for the newest alarms every few seconds and
// announces those it had not seen.
import { ref } from 'vue'
import { unwrap } from '@/api/client'
import { useApi } from './api'
import type { Alarm, Page } from './types'

export const ALARM_POLL_MS = 3000

export function useAlarmFeed(estate: () => string, onNew: (alarm: Alarm) => void) {
  const api = useApi()
  const alarms = ref<Alarm[]>([])
  let seen: Set<string> | null = null

  async function poll(state = 'active'): Promise<void> {
    const page = unwrap(
      await api.GET('/v1/alarms', { params: { query: { estate: estate(), state: state || undefined, limit: 100, sort: '-raised_at' } } }),
    ) as unknown as Page<Alarm>
    if (seen) page.items.filter((a) => !seen!.has(a.alarm_id)).forEach(onNew)
    seen = new Set([...(seen ?? []), ...page.items.map((a) => a.alarm_id)])
    alarms.value = page.items
  }

  return { alarms, poll }
}
