import { createAppI18n } from '@/shared/i18n'
import zh from './locales/zh-CN'
import en from './locales/en'

export const i18n = createAppI18n({ 'zh-CN': { portal: zh }, en: { portal: en } })
