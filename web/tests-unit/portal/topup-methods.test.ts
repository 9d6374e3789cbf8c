import { describe, expect, it } from 'vitest'
import { createApi } from '@/api/client'
import { chooseMethod, createOrder, invokeWechatPay, nextStep, surroundings, withReturn, type Order } from '@/portal/topup'

const WECHAT = { provider: 'wechat' as const, methods: ['native' as const, 'jsapi' as const, 'h5' as const] }
const ALIPAY = { provider: 'alipay' as const, methods: ['precreate' as const, 'wap' as const] }
const DESKTOP = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0'
const PHONE = 'Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Mobile/15E148 Safari/604.1'
const IN_WECHAT = `${PHONE} MicroMessenger/8.0.50`

function order(pay: Order['pay']): Order {
  return { order_id: 'o-1', account_id: 'A101', amount: '5.00', provider: 'wechat', method: 'native', status: 'open', pay }
}

describe('choosing how to pay', () => {
  it.each([
    [WECHAT, DESKTOP, '', 'native'],
    [WECHAT, PHONE, '', 'h5'],
    [WECHAT, IN_WECHAT, 'o-openid', 'jsapi'],
    [WECHAT, IN_WECHAT, '', 'native'], // inside WeChat without an openid: a QR code WeChat can read
    [ALIPAY, DESKTOP, '', 'precreate'],
    [ALIPAY, PHONE, '', 'wap'],
    [ALIPAY, IN_WECHAT, '', 'precreate'], // WeChat does not open Alipay's pages
    [{ provider: 'sandbox' as const, methods: ['native' as const] }, PHONE, '', 'native'],
  ])('%o on %s (openid %s) pays by %s', (offer, agent, openid, method) => {
    expect(chooseMethod(offer, surroundings(agent, openid))).toBe(method)
  })

  it('never picks what the provider does not offer', () => {
    expect(chooseMethod({ provider: 'wechat', methods: ['native'] }, surroundings(PHONE))).toBe('native')
  })
})

describe('what the page does with the pay parameters', () => {
  it.each([
    [{ code_url: 'weixin://wxpay/bizpayurl?pr=x' }, { kind: 'qr', text: 'weixin://wxpay/bizpayurl?pr=x' }],
    [{ qr_code: 'https://qr.alipay.com/x' }, { kind: 'qr', text: 'https://qr.alipay.com/x' }],
    [{ h5_url: 'https://wx.tenpay.com/h5' }, { kind: 'open', url: 'https://wx.tenpay.com/h5' }],
    [{ pay_url: 'https://openapi.alipay.com/gateway.do?a=1' }, { kind: 'open', url: 'https://openapi.alipay.com/gateway.do?a=1' }],
    [null, { kind: 'none' }],
  ])('%o → %o', (pay, next) => {
    expect(nextStep(order(pay))).toEqual(next)
  })

  it('hands the signed JSAPI package to WeixinJSBridge as it is and reads its verdict', async () => {
    const pay = { appId: 'wx1', timeStamp: '1', nonceStr: 'n', package: 'prepay_id=wx2', signType: 'RSA', paySign: 's' }
    expect(nextStep(order(pay)).kind).toBe('jsapi')
    const calls: unknown[] = []
    const bridge = (err_msg: string) => ({
      invoke: (name: string, params: Record<string, unknown>, done: (a: { err_msg?: string }) => void) => {
        calls.push([name, params])
        done({ err_msg })
      },
    })
    expect(await invokeWechatPay(pay, bridge('get_brand_wcpay_request:ok'))).toBe('ok')
    expect(await invokeWechatPay(pay, bridge('get_brand_wcpay_request:cancel'))).toBe('cancel')
    expect(await invokeWechatPay(pay)).toBe('fail') // not inside WeChat
    expect(calls[0]).toEqual(['getBrandWCPayRequest', pay])
  })

  it('sends WeChat H5 payers back to the portal, and leaves other pages alone', () => {
    expect(withReturn('https://wx.tenpay.com/cgi-bin/checkmweb?prepay_id=wx1', 'https://p.example/portal/topup/A 1')).toBe(
      'https://wx.tenpay.com/cgi-bin/checkmweb?prepay_id=wx1&redirect_url=https%3A%2F%2Fp.example%2Fportal%2Ftopup%2FA%201',
    )
    expect(withReturn('https://openapi.alipay.com/gateway.do?x=1', 'https://p')).toBe('https://openapi.alipay.com/gateway.do?x=1')
  })
})

describe('the order request', () => {
  it('carries the chosen provider and method, and the openid only for JSAPI', async () => {
    const bodies: unknown[] = []
    const api = createApi(async (input) => {
      bodies.push(JSON.parse(await (input as Request).text()))
      return new Response(JSON.stringify(order(null)), { status: 201, headers: { 'content-type': 'application/json' } })
    }, 'http://portal.test')
    await createOrder(api, 'A101', '5', { provider: 'wechat', method: 'jsapi', openid: 'o-1' })
    await createOrder(api, 'A101', '5', { provider: 'alipay', method: 'wap', openid: 'o-1' })
    expect(bodies).toEqual([
      { amount: '5', provider: 'wechat', method: 'jsapi', openid: 'o-1' },
      { amount: '5', provider: 'alipay', method: 'wap' },
    ])
  })
})
