import { describe, expect, it, vi } from 'vitest'
import { EventParser, StaffStream, type StaffFrame } from '@/console/live'

function body(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder()
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk))
      controller.close()
    },
  })
}

describe('event parser', () => {
  it('reads events split anywhere, skips comments and unreadable data', () => {
    const parser = new EventParser()
    const text = 'event: ready\nid: e-0\nretry: 3000\ndata: {"kinds":["alarm"]}\n\n: heartbeat\n\nevent: alarm\r\ndata: {"alarm_id":"a1"}\r\n\r\nevent: alarm\ndata: not json\n\n'
    const frames: StaffFrame[] = []
    for (let i = 0; i < text.length; i += 7) frames.push(...parser.push(text.slice(i, i + 7)))
    expect(frames).toEqual([
      { kind: 'ready', data: { kinds: ['alarm'] } },
      { kind: 'alarm', data: { alarm_id: 'a1' } },
    ])
  })
})

describe('staff stream', () => {
  it('hands frames on, says when it is up, and reconnects after the gateway ends it', async () => {
    vi.useFakeTimers()
    const opened: number[] = []
    const frames: string[] = []
    const status: boolean[] = []
    const stream = new StaffStream({
      open: async () => {
        opened.push(opened.length + 1)
        return opened.length === 2 ? null : body(['event: ready\ndata: {}\n\n', 'event: command\ndata: {"state":"sent"}\n\n'])
      },
      onFrame: (frame) => frames.push(frame.kind),
      onStatus: (up) => status.push(up),
      retryMs: 1000,
    })
    stream.start()
    await vi.advanceTimersByTimeAsync(10)
    expect(frames).toEqual(['ready', 'command'])
    expect(status).toEqual([true, false]) // the stream ended: down until the next connect
    await vi.advanceTimersByTimeAsync(1000) // second attempt refused (no body) ...
    expect(opened).toEqual([1, 2])
    await vi.advanceTimersByTimeAsync(1000) // ... third one works again
    expect(frames).toEqual(['ready', 'command', 'ready', 'command'])
    stream.stop()
    await vi.advanceTimersByTimeAsync(5000)
    expect(opened).toEqual([1, 2, 3])
    vi.useRealTimers()
  })
})
