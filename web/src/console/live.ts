// The staff live stream (`GET /v1/live`, server-sent events): alarms, command updates, meter states
// and balance events of the signed-in staff member's estates. It is read with fetch (through the typed
// client, so the bearer token goes in a header, never in a URL) rather than EventSource, which cannot
// send one. The stream only says that something changed: pages re-read their lists through the API
// when a frame arrives (and on every connect, since the gateway replays nothing), and fall back to
// polling every few seconds while the stream is down.
import { onBeforeUnmount, onMounted, ref, watch, type Ref } from 'vue'
import { useApi } from './api'

export type StaffKind = 'meter_state' | 'balance' | 'alarm' | 'command' | 'command_result'

export interface StaffFrame {
  kind: StaffKind | 'ready'
  data: Record<string, unknown>
}

/** Server-sent events from text chunks (any split): `event:` + `data:` lines, a blank line ends one. */
export class EventParser {
  private buffer = ''
  private event = ''
  private data: string[] = []

  push(chunk: string): StaffFrame[] {
    this.buffer += chunk
    const frames: StaffFrame[] = []
    let end: number
    while ((end = this.buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = this.buffer.slice(0, end)
      this.buffer = this.buffer.slice(end + (this.buffer.startsWith('\r\n', end) ? 2 : 1))
      if (line === '') {
        if (this.data.length) {
          try {
            frames.push({ kind: (this.event || 'message') as StaffFrame['kind'], data: JSON.parse(this.data.join('\n')) })
          } catch {
            // a frame we cannot read is skipped: the next re-read corrects the page
          }
        }
        this.event = ''
        this.data = []
        continue
      }
      if (line.startsWith(':')) continue // a heartbeat or a note from the server
      const colon = line.indexOf(':')
      const name = colon < 0 ? line : line.slice(0, colon)
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
      if (name === 'event') this.event = value
      else if (name === 'data') this.data.push(value)
    }
    return frames
  }
}

export interface StaffStreamOptions {
  /** Opens the stream: the response body (the typed client's `parseAs: 'stream'`). */
  open: (signal: AbortSignal) => Promise<ReadableStream<Uint8Array> | null>
  onFrame: (frame: StaffFrame) => void
  onStatus: (connected: boolean) => void
  retryMs?: number
}

/** One staff stream that reconnects by itself (after a refusal, a drop, or the gateway ending it). */
export class StaffStream {
  private controller: AbortController | null = null
  private timer: ReturnType<typeof setTimeout> | null = null
  private stopped = true
  private generation = 0 // a restarted stream's old connection ends quietly

  constructor(private readonly options: StaffStreamOptions) {}

  start(): void {
    this.stopped = false
    this.generation += 1
    void this.run(this.generation)
  }

  stop(): void {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    this.controller?.abort()
    this.controller = null
  }

  private async run(generation: number): Promise<void> {
    const controller = new AbortController()
    this.controller = controller
    try {
      const body = await this.options.open(controller.signal)
      if (!body) throw new Error('no stream')
      const reader = body.getReader()
      const decoder = new TextDecoder()
      const parser = new EventParser()
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        for (const frame of parser.push(decoder.decode(value, { stream: true }))) {
          if (frame.kind === 'ready') this.options.onStatus(true)
          this.options.onFrame(frame)
        }
      }
    } catch {
      // refused, dropped or aborted: below
    }
    if (this.controller === controller) this.controller = null
    if (generation !== this.generation) return
    this.options.onStatus(false)
    if (!this.stopped) this.timer = setTimeout(() => this.run(generation), this.options.retryMs ?? 3000)
  }
}

export const LIVE_REFRESH_MS = 30_000 // while the stream is up, a slow re-read still catches what it could not place
export const POLL_MS = 3_000 // while it is down, the pages poll as they did before the stream
const FRAME_REFRESH_MS = 300

export interface LiveRefreshOptions {
  /** Sees every frame first (to announce a new alarm, or patch a row in place). */
  onFrame?: (frame: StaffFrame) => void
  /** Re-read after a frame (default); false: only on connect and on the timer (`onFrame` patches). */
  refreshOnFrame?: boolean
  /** Only this estate's frames (the page's estate); the stream reconnects when it changes. */
  estate?: () => string | undefined
}

/**
 * Keep a page current: `refresh` now, again shortly after frames of `kinds` (a burst makes one
 * re-read, at most one a second), and on a timer — slowly while the stream is up, every few seconds
 * while it is down.
 */
export function useLiveRefresh(
  kinds: StaffKind[],
  refresh: () => Promise<unknown>,
  options: LiveRefreshOptions = {},
): { live: Ref<boolean> } {
  const api = useApi()
  const live = ref(false)
  let timer: ReturnType<typeof setTimeout> | undefined
  let soon: ReturnType<typeof setTimeout> | undefined

  function schedule(): void {
    clearTimeout(timer)
    timer = setTimeout(tick, live.value ? LIVE_REFRESH_MS : POLL_MS)
  }
  function tick(): void {
    if (document.visibilityState !== 'hidden') void refresh()
    schedule()
  }
  const stream = new StaffStream({
    open: async (signal) => {
      const estate = options.estate?.() || undefined
      const query = { kind: kinds, estate }
      const { data, response } = await api.GET('/v1/live', { params: { query }, parseAs: 'stream', signal })
      return response.ok ? data ?? null : null
    },
    onFrame: (frame) => {
      options.onFrame?.(frame)
      if ((options.refreshOnFrame ?? true) || frame.kind === 'ready') {
        soon ??= setTimeout(() => {
          soon = undefined
          void refresh()
        }, FRAME_REFRESH_MS)
      }
    },
    onStatus: (connected) => {
      if (live.value === connected) return
      live.value = connected
      schedule()
    },
  })
  onMounted(() => {
    void refresh()
    schedule()
    stream.start()
  })
  if (options.estate) {
    watch(options.estate, () => {
      stream.stop()
      stream.start()
    })
  }
  onBeforeUnmount(() => {
    stream.stop()
    clearTimeout(timer)
    clearTimeout(soon)
  })
  return { live }
}
