// Tariff lines in a tenant's words (峰/平/谷/尖, 第一档): the operator names rates freely, in
// English or Chinese, so known names are translated and anything else is shown as written.
const TIME_OF_USE: Record<string, 'sharp' | 'peak' | 'flat' | 'valley'> = {
  sharp: 'sharp',
  critical: 'sharp',
  尖: 'sharp',
  peak: 'peak',
  峰: 'peak',
  flat: 'flat',
  shoulder: 'flat',
  平: 'flat',
  valley: 'valley',
  'off-peak': 'valley',
  谷: 'valley',
}
const NUMERALS = '一二三四五六七八九'
const TIER = /^(?:tier|block|第)?\s*([1-9]|[一二三四五六七八九])\s*档?$/i
const DEFAULT_COMPONENTS = new Set(['flat', 'tou', 'time_of_use', 'tiered', 'tier'])

export type Translate = (key: string, values?: Record<string, unknown>) => string

/** A time-of-use rate or tier label as the tenant's language says it. */
export function rateLabel(label: string, t: Translate): string {
  const key = label.trim().toLowerCase()
  const rate = TIME_OF_USE[key]
  if (rate) return t(`portal.rate.${rate}`)
  const tier = TIER.exec(key)
  if (tier?.[1]) {
    const digit = tier[1]
    const n = /\d/.test(digit) ? Number(digit) : NUMERALS.indexOf(digit) + 1
    return t('portal.rate.tier', { n })
  }
  return label
}

/** One line of a charge: the component (when the operator named it) and its rate or tier. */
export function chargeLabel(component: string, label: string, t: Translate): string {
  if (label === component) return DEFAULT_COMPONENTS.has(component) ? t('portal.rate.single') : component
  const rate = rateLabel(label, t)
  return DEFAULT_COMPONENTS.has(component) ? rate : `${component} · ${rate}`
}

/** The unit a tenant's bill uses for a utility: 度 / 吨 (kWh / m³ in English). */
export function unitOf(utility: string, t: Translate): string {
  return t(`portal.unit.${utility === 'water' ? 'water' : 'electricity'}`)
}
