// The tenant's live push (`/v1/me/live`, server-sent events). A browser's EventSource cannot send
// the bearer token, so each connection opens with a single-use ticket; EventSource's own reconnect
// reuses the spent ticket and is refused, so on a closed source we fetch a new ticket and resume
// from the last event id seen (the gateway replays what we missed, or says `resumed: false`).
export type LiveKind = 'ready' | 'balance' | 'meter_state' | 'alarm'

export interface LiveFrame {
  kind: LiveKind
  data: Record<string, unknown>
}

export interface LiveOptions {
  /** POST /v1/me/live/tickets: the URL to open (`/v1/me/live?ticket=…`). */
  ticket: () => Promise<string>
  onFrame: (frame: LiveFrame) => void
  onStatus?: (connected: boolean) => void
  /** EventSource constructor (tests pass a fake). */
  source?: (url: string) => EventSource
  retryMs?: number
}

const KINDS: LiveKind[] = ['ready', 'balance', 'meter_state', 'alarm']

export class LiveStream {
  private current: EventSource | null = null
  private lastId = ''
  private stopped = false
  private timer: ReturnType<typeof setTimeout> | null = null

  constructor(private readonly options: LiveOptions) {}

  async start(): Promise<void> {
    this.stopped = false
    let url: string
    try {
      url = await this.options.ticket()
    } catch {
      this.retry()
      return
    }
    if (this.stopped) return
    if (this.lastId) url += `${url.includes('?') ? '&' : '?'}last_event_id=${encodeURIComponent(this.lastId)}`
    const open = this.options.source ?? ((u: string) => new EventSource(u))
    const source = open(url)
    this.current = source
    for (const kind of KINDS) {
      source.addEventListener(kind, (event) => {
        const message = event as MessageEvent<string>
        if (message.lastEventId) this.lastId = message.lastEventId
        if (kind === 'ready') this.options.onStatus?.(true)
        try {
          this.options.onFrame({ kind, data: JSON.parse(message.data) as Record<string, unknown> })
        } catch {
          // a frame we cannot read is skipped; the next re-read corrects the state
        }
      })
    }
    source.onerror = () => {
      if (source.readyState !== 2 /* CLOSED */) return // the browser is retrying by itself
      this.options.onStatus?.(false)
      source.close()
      this.retry()
    }
  }

  private retry(): void {
    if (this.stopped) return
    this.timer = setTimeout(() => void this.start(), this.options.retryMs ?? 3000)
  }

  stop(): void {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    this.current?.close()
    this.current = null
  }
}
