import { describe, expect, it, vi } from 'vitest'
import { LiveStream, type LiveFrame } from '@/portal/live'

/** An EventSource stand-in that the test drives: events by name, then a close by the server. */
class FakeSource {
  readyState = 1
  onerror: (() => void) | null = null
  private listeners: Record<string, ((event: MessageEvent) => void)[]> = {}
  closed = false
  constructor(readonly url: string) {}
  addEventListener(kind: string, listener: (event: MessageEvent) => void): void {
    ;(this.listeners[kind] ??= []).push(listener)
  }
  emit(kind: string, data: unknown, id = ''): void {
    for (const listener of this.listeners[kind] ?? []) listener(new MessageEvent(kind, { data: JSON.stringify(data), lastEventId: id }))
  }
  fail(): void {
    this.readyState = 2
    this.onerror?.()
  }
  close(): void {
    this.closed = true
  }
}

describe('live stream', () => {
  it('opens with a ticket, hands frames on, and resumes from the last id with a new ticket', async () => {
    vi.useFakeTimers()
    const sources: FakeSource[] = []
    const frames: LiveFrame[] = []
    const status: boolean[] = []
    let tickets = 0
    const stream = new LiveStream({
      ticket: async () => `/v1/me/live?ticket=t${++tickets}`,
      source: (url) => {
        const source = new FakeSource(url)
        sources.push(source)
        return source as unknown as EventSource
      },
      onFrame: (frame) => frames.push(frame),
      onStatus: (connected) => status.push(connected),
      retryMs: 100,
    })
    await stream.start()
    expect(sources[0]?.url).toBe('/v1/me/live?ticket=t1')
    sources[0]!.emit('ready', { tenant_id: 'T-1', resumed: false }, 'e-1')
    sources[0]!.emit('balance', { account_id: 'A101', level: 'ok' }, 'e-2')
    expect(frames.map((f) => f.kind)).toEqual(['ready', 'balance'])
    sources[0]!.fail()
    expect(sources[0]!.closed).toBe(true)
    await vi.advanceTimersByTimeAsync(150)
    expect(sources[1]?.url).toBe('/v1/me/live?ticket=t2&last_event_id=e-2')
    expect(status).toEqual([true, false])
    stream.stop()
    expect(sources[1]!.closed).toBe(true)
    vi.useRealTimers()
  })

  it('retries when no ticket can be had, and never after stop', async () => {
    vi.useFakeTimers()
    let calls = 0
    const stream = new LiveStream({
      ticket: async () => {
        calls += 1
        throw new Error('offline')
      },
      source: () => {
        throw new Error('not reached')
      },
      onFrame: () => undefined,
      retryMs: 100,
    })
    await stream.start()
    await vi.advanceTimersByTimeAsync(250)
    expect(calls).toBe(3)
    stream.stop()
    await vi.advanceTimersByTimeAsync(500)
    expect(calls).toBe(3)
    vi.useRealTimers()
  })
})
