// New alarms while the console is open: the page re-reads the newest alarms whenever the staff live
// stream (live.ts) carries one, or every few seconds while the stream is down, and announces those it
// had not seen. An alarm the stream carries is shown at once (`apply`); the re-read then fills in
// where it is (room, building), so the page does not wait for the list to learn of it.
import { ref } from 'vue'
import { unwrap } from '@/api/client'
import { useApi } from './api'
import type { Alarm, Page } from './types'

/** The states the alarm listing filters on (the gateway's OpenAPI enumerates them). */
export type AlarmState = 'active' | 'acknowledged' | 'cleared'

export function useAlarmFeed(estate: () => string, onNew: (alarm: Alarm) => void) {
  const api = useApi()
  const alarms = ref<Alarm[]>([])
  let seen: Set<string> | null = null

  async function poll(state: AlarmState | '' = 'active'): Promise<void> {
    const page = unwrap(
      await api.GET('/v1/alarms', { params: { query: { estate: estate(), state: state || undefined, limit: 100, sort: '-raised_at' } } }),
    ) as unknown as Page<Alarm>
    if (seen) page.items.filter((a) => !seen!.has(a.alarm_id)).forEach(onNew)
    seen = new Set([...(seen ?? []), ...page.items.map((a) => a.alarm_id)])
    alarms.value = page.items
  }

  /** An AlarmEvent from the live stream: into the list when it is in the state shown, out of it when not. */
  function apply(event: Record<string, unknown>, state = 'active'): void {
    const id = String(event.alarm_id)
    const index = alarms.value.findIndex((a) => a.alarm_id === id)
    const shown = index >= 0 ? alarms.value[index]! : undefined
    const alarm: Alarm = {
      meter_id: null,
      estate: null,
      building: null,
      room: null,
      occurrences: 1,
      raised_at: String(event.occurred_at),
      acknowledged_at: null,
      acknowledged_by: null,
      cleared_at: null,
      ...shown,
      alarm_id: id,
      source_id: String(event.source_id),
      alarm_type: String(event.alarm_type),
      severity: event.severity as Alarm['severity'],
      state: String(event.state),
      message_zh: String(event.message_zh),
      message_en: String(event.message_en),
      last_seen_at: String(event.occurred_at),
    }
    if (!state || alarm.state === state) alarms.value = shown ? alarms.value.map((a, i) => (i === index ? alarm : a)) : [alarm, ...alarms.value]
    else if (shown) alarms.value = alarms.value.filter((_, i) => i !== index)
    if (seen && !seen.has(id) && alarm.state === 'active') onNew(alarm)
    seen?.add(id)
  }

  return { alarms, poll, apply }
}
