import { describe, expect, it, vi } from 'vitest'
import { mount } from '@vue/test-utils'
import ElementPlus from 'element-plus'
import { i18n } from '@/console/i18n'
import LevelTag from '@/console/components/LevelTag.vue'
import ReceiptDialog from '@/console/components/ReceiptDialog.vue'

const plugins = [ElementPlus, i18n]

describe('LevelTag', () => {
  it.each([
    ['ok', '正常', 'success'],
    ['low_1', '余额偏低', 'warning'],
    ['exhausted', '已欠费', 'danger'],
    [null, '—', 'info'],
  ])('%s reads %s in a %s tag', (level, text, type) => {
    const tag = mount(LevelTag, { props: { level }, global: { plugins } })
    expect(tag.text()).toBe(text)
    expect(tag.find('.el-tag').classes()).toContain(`el-tag--${type}`)
  })
})

describe('ReceiptDialog', () => {
  const receipt = {
    receipt_no: 'counter-1-000007',
    account_id: 'A102',
    tenant: '租户 A102',
    amount: '50.00',
    balance_after: '80.5',
    payment_id: 'p-1',
    issued_at: '2026-12-07T16:30:05Z',
    counter_id: 'counter-1',
  }

  it('shows what the cashier took, in local time, and prints', async () => {
    const print = vi.spyOn(window, 'print').mockImplementation(() => undefined)
    const dialog = mount(ReceiptDialog, { props: { receipt }, global: { plugins }, attachTo: document.body })
    await dialog.vm.$nextTick()
    const text = document.body.textContent ?? ''
    expect(text).toContain('counter-1-000007')
    expect(text).toContain('¥50.00')
    expect(text).toContain('¥80.50')
    expect(text).toContain('2026-12-08 00:30:05')
    ;(document.querySelector('[data-test=print]') as HTMLButtonElement).click()
    expect(print).toHaveBeenCalledOnce()
    dialog.unmount()
  })

  it('is closed without a receipt', () => {
    const dialog = mount(ReceiptDialog, { props: { receipt: null }, global: { plugins } })
    expect(dialog.find('[data-test=receipt]').exists()).toBe(false)
  })
})
