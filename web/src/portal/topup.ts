// An online top-up: the order, the way the payer pays it (a QR code to scan, a provider page to open on
// a phone, WeChat's own payment sheet inside WeChat, or the sandbox in the demo), and waiting until
// billing has booked it. The supply itself comes back through control, seen on the live push.
import { idempotencyKey, unwrap, type Api, type paths, type Schemas } from '@/api/client'

export type Order = Schemas['PaymentOrderOut']
export type PayParams = Schemas['PayParams']
export type Provider = Schemas['PaymentMethodOut']['provider']
export type Method = Schemas['PaymentMethodOut']['methods'][number]
export type Offer = Schemas['PaymentMethodOut']
type TopUpBody = paths['/v1/me/accounts/{account_id}/topups']['post']['requestBody']['content']['application/json']

/** The provider the portal pays with when nobody chose one (the demo's). */
export const PROVIDER: Provider = 'sandbox'

/** The gateway's amount rule: above 0, at most 99,999.99, at most two decimals, no leading zeros. */
const AMOUNT = /^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,4}(\.[0-9]{1,2})?)$/

export function validAmount(text: string): boolean {
  return AMOUNT.test(text.trim())
}

/** Where the page runs, as far as choosing a payment method goes. */
export interface Surroundings {
  inWechat: boolean // WeChat's in-app browser: JSAPI works there (with the payer's openid)
  phone: boolean // a phone's browser: open the provider's page (H5 / wap) instead of showing a QR code
  openid: string // the payer's openid under the operator's WeChat app, when a sign-in hop gave one
}

export function surroundings(userAgent: string, openid = ''): Surroundings {
  return {
    inWechat: /MicroMessenger/i.test(userAgent),
    phone: /Android|iPhone|iPad|iPod|Mobile|HarmonyOS/i.test(userAgent),
    openid,
  }
}

/** The method to pay with: WeChat's sheet inside WeChat (needs the openid), the provider's page on a phone,
 * else a QR code to scan with the phone. Only what the provider offers; the QR-code method first. */
export function chooseMethod(offer: Offer, where: Surroundings): Method {
  const has = (m: Method): boolean => offer.methods.includes(m)
  if (offer.provider === 'wechat') {
    if (where.inWechat && where.openid && has('jsapi')) return 'jsapi'
    if (where.phone && !where.inWechat && has('h5')) return 'h5'
  }
  if (offer.provider === 'alipay' && where.phone && !where.inWechat && has('wap')) return 'wap'
  return offer.methods[0] ?? 'native'
}

/** What the page does with an order's pay parameters. */
export type Next =
  | { kind: 'qr'; text: string }
  | { kind: 'open'; url: string }
  | { kind: 'jsapi'; params: PayParams }
  | { kind: 'none' }

export function nextStep(order: Order): Next {
  const pay = order.pay
  if (!pay) return { kind: 'none' }
  if (pay.paySign && pay.package) return { kind: 'jsapi', params: pay }
  const url = pay.h5_url ?? pay.pay_url
  if (url) return { kind: 'open', url }
  const text = pay.code_url ?? pay.qr_code
  if (text) return { kind: 'qr', text }
  return { kind: 'none' }
}

/** WeChat H5 returns the payer to `redirect_url` once they leave WeChat's page (paid or not). */
export function withReturn(url: string, back: string): string {
  if (!url.startsWith('https://wx.tenpay.com/')) return url
  return `${url}${url.includes('?') ? '&' : '?'}redirect_url=${encodeURIComponent(back)}`
}

interface Bridge {
  invoke(name: string, params: Record<string, unknown>, done: (answer: { err_msg?: string }) => void): void
}

/** Ask WeChat to show its payment sheet (inside WeChat only). Resolves with WeChat's verdict; the
 * balance still rises only when billing has the provider's signed notification. */
export function invokeWechatPay(params: PayParams, bridge?: Bridge): Promise<'ok' | 'cancel' | 'fail'> {
  const jsBridge = bridge ?? (globalThis as { WeixinJSBridge?: Bridge }).WeixinJSBridge
  if (!jsBridge) return Promise.resolve('fail')
  const { appId, timeStamp, nonceStr, package: pkg, signType, paySign } = params
  return new Promise((resolve) =>
    jsBridge.invoke('getBrandWCPayRequest', { appId, timeStamp, nonceStr, package: pkg, signType, paySign }, (a) =>
      resolve(a.err_msg === 'get_brand_wcpay_request:ok' ? 'ok' : a.err_msg?.endsWith(':cancel') ? 'cancel' : 'fail'),
    ),
  )
}

export async function paymentMethods(api: Api, accountId: string): Promise<Offer[]> {
  return unwrap(
    await api.GET('/v1/me/accounts/{account_id}/payment-methods', { params: { path: { account_id: accountId } } }),
  )
}

export async function createOrder(
  api: Api,
  accountId: string,
  amount: string,
  choice: { provider: Provider; method?: Method; openid?: string } = { provider: PROVIDER },
): Promise<Order> {
  const body: TopUpBody = { amount: amount.trim(), provider: choice.provider }
  if (choice.method) body.method = choice.method
  if (choice.method === 'jsapi' && choice.openid) body.openid = choice.openid
  return unwrap(
    await api.POST('/v1/me/accounts/{account_id}/topups', {
      params: { path: { account_id: accountId }, header: { 'idempotency-key': idempotencyKey('topup') } },
      body,
    }),
  )
}

export async function sandboxPay(api: Api, orderId: string): Promise<void> {
  unwrap(await api.POST('/v1/me/payments/{order_id}/sandbox-pay', { params: { path: { order_id: orderId } } }))
}

export async function fetchOrder(api: Api, orderId: string): Promise<Order> {
  return unwrap(await api.GET('/v1/me/payments/{order_id}', { params: { path: { order_id: orderId } } }))
}

/** Poll the order until it is no longer open (or `timeoutMs` passes, or `stop()` says so): its last status. */
export async function waitForOrder(
  api: Api,
  orderId: string,
  {
    intervalMs = 1000,
    timeoutMs = 60_000,
    sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
    stop = (): boolean => false,
  }: { intervalMs?: number; timeoutMs?: number; sleep?: (ms: number) => Promise<unknown>; stop?: () => boolean } = {},
): Promise<Order> {
  const until = Date.now() + timeoutMs
  for (;;) {
    const order = await fetchOrder(api, orderId)
    if (order.status !== 'open' || Date.now() >= until || stop()) return order
    await sleep(intervalMs)
  }
}

/** The order a payer left the portal for (H5 / wap), so the page can pick it up when they come back. */
export const pending = {
  key: (accountId: string) => `shuidian-topup:${accountId}`,
  save(accountId: string, orderId: string): void {
    sessionStorage.setItem(this.key(accountId), orderId)
  },
  take(accountId: string): string | null {
    const id = sessionStorage.getItem(this.key(accountId))
    sessionStorage.removeItem(this.key(accountId))
    return id
  },
}
