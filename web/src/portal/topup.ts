// An online top-up: the order, the provider's payment (the sandbox's in the demo), and waiting
// until billing has booked it. The supply itself comes back through control, seen on the live push.
import { idempotencyKey, unwrap, type Api, type Schemas } from '@/api/client'

export type Order = Schemas['PaymentOrderOut']

/** The provider the portal pays with. The gateway offers no list of the configured ones yet, and a
 * real provider's order carries no payment parameters for a page to hand to WeChat or Alipay. */
export const PROVIDER = 'sandbox'

/** The gateway's amount rule: above 0, at most 99,999.99, at most two decimals, no leading zeros. */
const AMOUNT = /^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,4}(\.[0-9]{1,2})?)$/

export function validAmount(text: string): boolean {
  return AMOUNT.test(text.trim())
}

export async function createOrder(api: Api, accountId: string, amount: string): Promise<Order> {
  return unwrap(
    await api.POST('/v1/me/accounts/{account_id}/topups', {
      params: { path: { account_id: accountId }, header: { 'idempotency-key': idempotencyKey('topup') } },
      body: { amount: amount.trim(), provider: PROVIDER },
    }),
  )
}

export async function sandboxPay(api: Api, orderId: string): Promise<void> {
  unwrap(await api.POST('/v1/me/payments/{order_id}/sandbox-pay', { params: { path: { order_id: orderId } } }))
}

/** Poll the order until it is no longer open (or `timeoutMs` passes): its last status. */
export async function waitForOrder(
  api: Api,
  orderId: string,
  { intervalMs = 1000, timeoutMs = 60_000, sleep = (ms: number) => new Promise((r) => setTimeout(r, ms)) } = {},
): Promise<Order> {
  const until = Date.now() + timeoutMs
  for (;;) {
    const order = unwrap(await api.GET('/v1/me/payments/{order_id}', { params: { path: { order_id: orderId } } }))
    if (order.status !== 'open' || Date.now() >= until) return order
    await sleep(intervalMs)
  }
}
