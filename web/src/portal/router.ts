// Pages are loaded when first opened, so the sign-in page of a slow phone downloads only itself.
import { createRouter, createWebHistory, type RouteRecordRaw } from 'vue-router'
import { useAuth } from './auth'

const routes: RouteRecordRaw[] = [
  { path: '/login', name: 'login', component: () => import('./pages/SignInPage.vue'), meta: { public: true } },
  { path: '/', name: 'home', component: () => import('./pages/HomePage.vue'), meta: { tab: true } },
  { path: '/usage', name: 'usage', component: () => import('./pages/UsagePage.vue'), meta: { tab: true } },
  { path: '/bills', name: 'bills', component: () => import('./pages/BillsPage.vue'), meta: { tab: true } },
  { path: '/mine', name: 'mine', component: () => import('./pages/MinePage.vue'), meta: { tab: true } },
  { path: '/topup/:accountId', name: 'topup', component: () => import('./pages/TopUpPage.vue'), props: true },
  { path: '/payments', name: 'payments', component: () => import('./pages/PaymentsPage.vue') },
  {
    path: '/explain/:accountId/:txnId',
    name: 'explain',
    component: () => import('./pages/ExplainPage.vue'),
    props: true,
  },
  { path: '/alarms', name: 'alarms', component: () => import('./pages/AlarmsPage.vue') },
  { path: '/settings', name: 'settings', component: () => import('./pages/SettingsPage.vue') },
  { path: '/:rest(.*)*', redirect: '/' },
]

export const router = createRouter({ history: createWebHistory('/portal/'), routes })

router.beforeEach(async (to) => {
  if (to.meta.public) return true
  const auth = useAuth()
  if (!auth.signedIn && !(await auth.resume().catch(() => false))) {
    return { name: 'login', query: to.fullPath === '/' ? {} : { next: to.fullPath } }
  }
  return true
})
