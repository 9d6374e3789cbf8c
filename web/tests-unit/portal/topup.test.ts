import { describe, expect, it } from 'vitest'
import { createApi } from '@/api/client'
import { createOrder, sandboxPay, waitForOrder } from '@/portal/topup'

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })
}

describe('an online top-up', () => {
  it('creates the order with a fresh idempotency key, pays it in the sandbox and waits until it is paid', async () => {
    const seen: { method: string; path: string; key: string | null; body: string }[] = []
    const statuses = ['open', 'open', 'paid']
    const api = createApi(async (input) => {
      const request = input as Request
      const path = new URL(request.url).pathname
      seen.push({ method: request.method, path, key: request.headers.get('idempotency-key'), body: await request.text() })
      const order = { order_id: 'o-1', account_id: 'A101', amount: '50.00', provider: 'sandbox' }
      if (path.endsWith('/topups')) return json({ ...order, status: 'open' }, 201)
      if (path.endsWith('/sandbox-pay')) return json({ result: 'accepted' })
      return json({ ...order, status: statuses.shift() })
    }, 'http://portal.test')

    const order = await createOrder(api, 'A101', ' 50 ')
    await sandboxPay(api, order.order_id)
    const paid = await waitForOrder(api, order.order_id, { intervalMs: 1, sleep: async () => undefined })

    expect(paid.status).toBe('paid')
    expect(seen[0]).toMatchObject({ method: 'POST', path: '/v1/me/accounts/A101/topups' })
    expect(JSON.parse(seen[0]!.body)).toEqual({ amount: '50', provider: 'sandbox' })
    expect(seen[0]!.key).toMatch(/^topup-[0-9a-f]{32}$/)
    expect(seen[1]).toMatchObject({ method: 'POST', path: '/v1/me/payments/o-1/sandbox-pay' })
    expect(seen.slice(2).map((s) => s.path)).toEqual(Array(3).fill('/v1/me/payments/o-1'))
  })

  it('stops waiting at the timeout with the order still open', async () => {
    const api = createApi(
      async () => json({ order_id: 'o-2', account_id: 'A101', amount: '5.00', provider: 'sandbox', status: 'open' }),
      'http://portal.test',
    )
    const order = await waitForOrder(api, 'o-2', { timeoutMs: 0, sleep: async () => undefined })
    expect(order.status).toBe('open')
  })

  it('refuses what the gateway refuses, with its problem', async () => {
    const api = createApi(
      async () => json({ status: 422, title: 'Unprocessable', code: 'validation_error', detail: 'amount' }, 422),
      'http://portal.test',
    )
    await expect(createOrder(api, 'A101', '0')).rejects.toMatchObject({ status: 422 })
  })
})
