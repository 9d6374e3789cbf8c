import { createRouter, createWebHistory, type RouteRecordRaw } from 'vue-router'
import { useAuth } from './auth'
import { PAGES, homeFor } from './nav'

const views: Record<string, () => Promise<unknown>> = {
  overview: () => import('./pages/OverviewPage.vue'),
  cash: () => import('./pages/CashDeskPage.vue'),
  rooms: () => import('./pages/RoomsPage.vue'),
  devices: () => import('./pages/DevicesPage.vue'),
  commands: () => import('./pages/CommandsPage.vue'),
  alarms: () => import('./pages/AlarmsPage.vue'),
  billing: () => import('./pages/BillingPage.vue'),
  reports: () => import('./pages/ReportsPage.vue'),
}

const routes: RouteRecordRaw[] = [
  { path: '/login', name: 'login', component: () => import('./pages/SignInPage.vue'), meta: { public: true } },
  ...PAGES.map((page) => ({
    path: page.path,
    name: page.name,
    component: views[page.name]!,
    meta: { action: page.action },
  })),
  {
    path: '/rooms/:roomId',
    name: 'household',
    component: () => import('./pages/HouseholdPage.vue'),
    props: true,
    meta: { action: 'premises:read' },
  },
  { path: '/:rest(.*)*', redirect: '/' },
]

export const router = createRouter({ history: createWebHistory('/console/'), routes })

router.beforeEach(async (to) => {
  const auth = useAuth()
  if (to.meta.public) return true
  if (!auth.signedIn && !(await auth.resume().catch(() => false))) {
    return { name: 'login', query: to.fullPath === '/' ? {} : { next: to.fullPath } }
  }
  const action = to.meta.action as string | undefined
  if (action && !auth.can(action)) {
    const home = homeFor(auth.me!.role, auth.me!.actions)
    return home === to.path ? true : home
  }
  return true
})
