// Presentation of money, quantities and instants: local time (Asia/Shanghai) only here, at the edge.
export const TIME_ZONE = 'Asia/Shanghai'

/** A money string from the API ("12.3", "-0.5") shown as yuan with two decimals; never re-rounded. */
export function yuan(amount: string | number | null | undefined): string {
  if (amount === null || amount === undefined || amount === '') return '—'
  const text = String(amount)
  const negative = text.startsWith('-')
  const [whole = '0', fraction = ''] = text.replace(/^[-+]/, '').split('.')
  const fen = (fraction + '00').slice(0, 2) // cut toward zero, the ledger's rule
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',')
  const shown = `${grouped}.${fen}`
  return negative && shown !== '0.00' ? `-¥${shown}` : `¥${shown}`
}

/** An ISO instant as local date and time, e.g. 2026-12-07 16:30. */
export function localTime(iso: string | null | undefined, withSeconds = false): string {
  if (!iso) return '—'
  const date = new Date(iso)
  if (Number.isNaN(date.getTime())) return iso
  const parts = new Intl.DateTimeFormat('en-CA', {
    timeZone: TIME_ZONE,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    second: withSeconds ? '2-digit' : undefined,
    hourCycle: 'h23',
  }).formatToParts(date)
  const get = (type: string) => parts.find((p) => p.type === type)?.value ?? ''
  const time = `${get('hour')}:${get('minute')}${withSeconds ? `:${get('second')}` : ''}`
  return `${get('year')}-${get('month')}-${get('day')} ${time}`
}

/** Today's date in local time, YYYY-MM-DD. */
export function localDate(at: Date = new Date()): string {
  return localTime(at.toISOString()).slice(0, 10)
}

/** This month in local time, YYYY-MM. */
export function localMonth(at: Date = new Date()): string {
  return localDate(at).slice(0, 7)
}

/** A quantity string with its unit: kWh for electricity, m³ for water. */
export function quantity(value: string | number | null | undefined, utility: string): string {
  if (value === null || value === undefined || value === '') return '—'
  const n = Number(value)
  const shown = Number.isFinite(n) ? n.toLocaleString('zh-CN', { maximumFractionDigits: 2 }) : String(value)
  return `${shown} ${utility === 'water' ? 'm³' : 'kWh'}`
}

/** Rows as CSV text (RFC 4180), with a leading ' on cells a spreadsheet would run as a formula (OWASP). */
export function toCsv(rows: readonly (readonly unknown[])[]): string {
  const cell = (value: unknown): string => {
    let text = value === null || value === undefined ? '' : String(value)
    if (/^[=+\-@\t\r]/.test(text) && !/^-?\d+(\.\d+)?$/.test(text)) text = `'${text}`
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text
  }
  return rows.map((row) => row.map(cell).join(',')).join('\r\n') + '\r\n'
}

/** Offer text as a file download (BOM first, so spreadsheet software reads UTF-8 Chinese). */
export function download(filename: string, text: string, type = 'text/csv;charset=utf-8'): void {
  const url = URL.createObjectURL(new Blob(['\ufeff', text], { type }))
  const link = document.createElement('a')
  link.href = url
  link.download = filename
  link.click()
  setTimeout(() => URL.revokeObjectURL(url), 1000)
}
