// Tally dashboard: plain JavaScript, no build step. Reads the query API of the server it is served
// from, with a read token the user pastes; tokens stay in sessionStorage (or localStorage when
// remembered) and go out only in the Authorization header, never in the URL.
;(() => {
  const $ = (id) => document.getElementById(id)
  const STORE_KEY = 'tally.dashboard.sites'
  const REALTIME_MINUTES = 5
  const REALTIME_EVERY_MS = 5000
  const REFRESH_EVERY_MS = 60_000
  const fmt = new Intl.NumberFormat()
  /** Per property, the metrics the API takes with it (served by plugin.ts from query/params.ts). */
  const MODEL = window.TALLY_MODEL || {
    metrics: {},
    goalMetrics: {},
    cards: { all: [], goal: [] },
    lines: { all: [], goal: [] },
  }
  /** Rows per breakdown table. */
  const ROWS = 10
  const LABELS = {
    path: 'Page',
    entry_page: 'Entry page',
    exit_page: 'Exit page',
    referrer: 'Referrer',
    source: 'Source',
    channel: 'Channel',
    country: 'Country',
    browser: 'Browser',
    device: 'Device',
    goal: 'Goal',
  }
  const METRIC_LABELS = {
    visitors: 'visitors',
    pageviews: 'pageviews',
    events: 'events',
    visits: 'visits',
    bounce_rate: 'bounce rate',
    visit_duration: 'visit duration',
    conversions: 'unique conversions',
    conversion_rate: 'conversion rate',
  }
  const PROP = 'prop:'
  const labelOf = (property) =>
    LABELS[property] || (property.startsWith(PROP) ? property.slice(PROP.length) : property)
  /** The metrics the API takes with a property: custom properties (`prop:KEY`) all take the same. */
  const metricsOf = (property) =>
    MODEL.metrics[property] || (property.startsWith(PROP) ? MODEL.propMetrics : undefined)
  /**
   * The metrics a breakdown by a property takes under a goal filter (conversions by that property;
   * none where the API does not keep them, as by exit page).
   */
  const goalMetricsOf = (property) =>
    MODEL.goalMetrics?.[property] || (property.startsWith(PROP) ? MODEL.propGoalMetrics : undefined) || []
  /** Under a goal filter, a panel by another property shows these of them, in this order. */
  const GOAL_COLUMNS = ['conversions', 'events', 'conversion_rate']
  /** Column headers of the metrics shown under a goal filter. */
  const GOAL_HEADERS = {
    conversions: 'Conversions',
    events: 'Completions',
    conversion_rate: 'Conversion rate %',
  }
  const capital = (text) => text.charAt(0).toUpperCase() + text.slice(1)

  // --- sites and tokens ----------------------------------------------------------------------
  const read = (storage) => {
    try {
      const list = JSON.parse(storage.getItem(STORE_KEY) || '[]')
      return Array.isArray(list) ? list.filter((s) => s && typeof s.site === 'string') : []
    } catch (_) {
      return []
    }
  }
  const sites = () => {
    const out = new Map()
    for (const s of read(localStorage)) out.set(s.site, { ...s, remembered: true })
    for (const s of read(sessionStorage)) out.set(s.site, { ...s, remembered: false })
    return [...out.values()]
  }
  const saveSite = (site, token, remember) => {
    removeSite(site)
    const storage = remember ? localStorage : sessionStorage
    storage.setItem(STORE_KEY, JSON.stringify([...read(storage), { site, token }]))
  }
  const removeSite = (site) => {
    for (const storage of [localStorage, sessionStorage]) {
      const rest = read(storage).filter((s) => s.site !== site)
      if (rest.length > 0) storage.setItem(STORE_KEY, JSON.stringify(rest))
      else storage.removeItem(STORE_KEY)
    }
  }

  // --- state in the URL fragment: site, range and the filter (never the token) ------------------
  const state = () => {
    const h = new URLSearchParams(location.hash.slice(1))
    return {
      site: h.get('site') || '',
      range: h.get('range') || '24h',
      filter: h.get('filter') || '',
      compare: h.get('compare') || '',
    }
  }
  const setState = (next) => {
    const s = { ...state(), ...next }
    if (!s.filter) delete s.filter
    history.replaceState(null, '', `#${new URLSearchParams(s)}`)
  }

  // --- the filter: one property == one value, in the API's syntax (query/params.ts parseFilters) ---
  // A backslash escapes `;`, `|` and `\` inside a value.
  const escapeValue = (v) => v.replace(/[\\;|]/g, (c) => `\\${c}`)
  const filterOf = (raw) => {
    const at = raw.indexOf('==')
    if (at <= 0) return undefined
    const property = raw.slice(0, at)
    if (!metricsOf(property)) return undefined
    return { property, value: raw.slice(at + 2).replace(/\\(.)/g, '$1'), raw }
  }
  const filterText = (property, value) => `${property}==${escapeValue(value)}`

  // --- API ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super(body?.message || `HTTP ${status}`)
      this.status = status
      this.code = body?.code
    }
  }
  const api = (endpoint, params, signal) =>
    get(params.site, `/v1/stats/${endpoint}?${new URLSearchParams(params)}`, signal)
  const get = async (site, url, signal) => {
    const entry = sites().find((s) => s.site === site)
    if (!entry) throw new ApiError(401, { message: `no read token for ${site}` })
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${entry.token}` },
      cache: 'no-store',
      signal,
    })
    const body = await res.json().catch(() => undefined)
    if (!res.ok) throw new ApiError(res.status, body)
    return body
  }

  // --- rendering ------------------------------------------------------------------------------
  const status = (text, isError) => {
    const el = $('status')
    el.textContent = text
    el.className = isError ? 'error' : ''
  }
  const utc = (iso) => `${iso.slice(0, 16).replace('T', ' ')} UTC`
  /** Whole seconds as "1m 05s" (or "42s"). */
  const duration = (s) => (s >= 60 ? `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s` : `${s}s`)

  // Countries: the ISO code as a flag (regional indicator symbols) and a name in the browser's language.
  let regionNames
  try {
    regionNames = new Intl.DisplayNames(undefined, { type: 'region' })
  } catch (_) {
    regionNames = undefined
  }
  const flagOf = (code) => String.fromCodePoint(...[...code].map((c) => 0x1f1a5 + c.charCodeAt(0)))
  const countryName = (code) => {
    try {
      return regionNames?.of(code) || code
    } catch (_) {
      return code
    }
  }
  const isCountryCode = (property, value) => property === 'country' && /^[A-Z]{2}$/.test(value)
  /**
   * How a value of `property` reads (it is filtered on as stored); a flag is decoration, left out
   * for screen readers (the name follows).
   */
  const displayNodes = (property, value) => {
    if (!isCountryCode(property, value)) return [value]
    const flag = document.createElement('span')
    flag.setAttribute('aria-hidden', 'true')
    flag.textContent = flagOf(value)
    return [flag, ` ${countryName(value)}`]
  }

  const messageRow = (body, columns, text, className) => {
    const td = document.createElement('td')
    td.colSpan = columns
    td.className = className
    td.textContent = text
    body.replaceChildren(document.createElement('tr'))
    body.lastChild.append(td)
  }

  /**
   * Fills a breakdown table: one row per value, the first metric as a bar behind the name, which is
   * a button that filters the dashboard by the value (or removes the filter when it is the one set).
   */
  const fillTable = (table, rows, property, metrics, active) => {
    const body = table.tBodies[0]
    const visible = rows.filter((r) => (r[metrics[0]] ?? 0) > 0)
    if (visible.length === 0) {
      messageRow(body, metrics.length + 1, 'No data', 'empty')
      return
    }
    body.replaceChildren()
    const top = Math.max(...visible.map((r) => r[metrics[0]] ?? 0), 1)
    for (const r of visible) {
      const value = String(r[property])
      const tr = document.createElement('tr')
      const name = document.createElement('td')
      const pick = document.createElement('button')
      pick.type = 'button'
      pick.className = 'pick'
      pick.append(...displayNodes(property, value))
      pick.dataset.value = value
      const isActive = active?.property === property && active.value === value
      pick.setAttribute('aria-pressed', String(isActive))
      pick.title = isActive ? 'Remove this filter' : `Filter by ${labelOf(property)}: ${value}`
      pick.addEventListener('click', () => setFilter(isActive ? '' : filterText(property, value)))
      name.append(pick)
      name.style.setProperty('--share', `${Math.round(((r[metrics[0]] ?? 0) / top) * 100)}%`)
      tr.append(name)
      for (const m of metrics) {
        const td = document.createElement('td')
        td.textContent = fmt.format(r[m] ?? 0)
        tr.append(td)
      }
      body.append(tr)
    }
  }

  // --- panels: a tabbed set of breakdown tables (one per property), loaded when shown ------------
  /**
   * One panel of `[data-panel]` markup: its tables (`table[data-property][data-metrics]`) are views;
   * with a tablist, the tab whose aria-controls holds a table shows it. Only the shown view is read;
   * another is read when its tab is picked (once per load of the dashboard).
   */
  const makePanel = (el) => {
    // A property this deployment does not aggregate (TALLY_BREAKDOWNS) takes no metric: its tab and
    // table are hidden, and a panel left without any is hidden whole (and not in `panels`).
    const tables = [...el.querySelectorAll('table[data-property]')]
    for (const table of tables) {
      if (metricsOf(table.dataset.property)?.length !== 0) continue
      const box = table.closest('[role=tabpanel]')
      const tab = box ? el.querySelector(`[role=tab][aria-controls="${box.id}"]`) : null
      if (tab) tab.remove()
      ;(box || table).remove()
    }
    if (!el.querySelector('table[data-property]')) {
      el.hidden = true
      return undefined
    }
    const views = [...el.querySelectorAll('table[data-property]')].map((table) => {
      const box = table.closest('[role=tabpanel]')
      return {
        table,
        box,
        tab: box ? el.querySelector(`[role=tab][aria-controls="${box.id}"]`) : null,
        property: table.dataset.property,
        metrics: table.dataset.metrics.split(','),
        /** The load whose rows the table shows. */
        shown: undefined,
      }
    })
    const panel = {
      views,
      active: views.find((v) => v.tab?.getAttribute('aria-selected') === 'true') || views[0],
      /** Shows a view's tab (the rows it holds stay until read again). */
      show(view) {
        panel.active = view
        for (const v of views) {
          if (!v.tab) continue
          const on = v === view
          v.tab.setAttribute('aria-selected', String(on))
          v.tab.tabIndex = on ? 0 : -1
          v.box.hidden = !on
        }
      },
      /** Shows a view's tab and reads its rows unless it holds the current load's. */
      select(view) {
        panel.show(view)
        if (current && view.shown !== current)
          showView(view, current).catch((err) => failed(err, current.site))
      },
    }
    for (const v of views) {
      if (!v.tab) continue
      v.tab.addEventListener('click', () => panel.select(v))
      // Arrow keys move between the tabs (WAI-ARIA tabs pattern), Home and End to the ends.
      v.tab.addEventListener('keydown', (e) => {
        const i = views.indexOf(v)
        const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: views.length - 1 }[e.key]
        if (to === undefined) return
        e.preventDefault()
        const next = views[(to + views.length) % views.length]
        next.tab.focus()
        panel.select(next)
      })
    }
    // The tab selected in the markup may be one hidden above: the first left is shown then.
    panel.show(panel.active)
    return panel
  }
  const panels = [...document.querySelectorAll('[data-panel]')].map(makePanel).filter(Boolean)

  // --- the properties panel: one tab per custom property the site declares ----------------------
  const PROP_METRICS = ['visitors', 'events']
  /** The site whose keys the properties panel holds, and its panel (in `panels` while it has keys). */
  let propsOf
  let propsPanel
  /**
   * Builds the properties panel for the site's declared keys (GET /v1/sites/:site/props), once per
   * site shown: a tab and a table per key, read like the other panels. No keys: the panel is hidden.
   */
  const loadProps = async (site, signal) => {
    if (propsOf === site) return
    const { keys } = await get(site, `/v1/sites/${encodeURIComponent(site)}/props`, signal)
    if (signal.aborted) return
    propsOf = site
    if (propsPanel) panels.splice(panels.indexOf(propsPanel), 1)
    propsPanel = undefined
    const el = $('props-panel')
    const tabs = keys.map((key, i) => {
      const tab = document.createElement('button')
      tab.type = 'button'
      tab.setAttribute('role', 'tab')
      tab.id = `prop-${i}-tab`
      tab.setAttribute('aria-controls', `prop-${i}-view`)
      tab.setAttribute('aria-selected', String(i === 0))
      if (i > 0) tab.tabIndex = -1
      tab.textContent = key
      return tab
    })
    const views = keys.map((key, i) => {
      const box = document.createElement('div')
      box.setAttribute('role', 'tabpanel')
      box.id = `prop-${i}-view`
      box.setAttribute('aria-labelledby', `prop-${i}-tab`)
      box.hidden = i > 0
      const table = document.createElement('table')
      table.id = `prop-${i}`
      table.dataset.property = `${PROP}${key}`
      table.dataset.metrics = PROP_METRICS.join(',')
      const head = table.createTHead().insertRow()
      for (const text of [key, 'Visitors', 'Events']) {
        const th = document.createElement('th')
        th.textContent = text
        head.append(th)
      }
      table.createTBody()
      box.append(table)
      return box
    })
    $('props-tabs').replaceChildren(...tabs)
    $('props-views').replaceChildren(...views)
    el.hidden = keys.length === 0
    if (keys.length > 0) {
      propsPanel = makePanel(el)
      panels.push(propsPanel)
    }
  }

  /**
   * The rows of a view under the load `at`, or why there are none: breakdowns are stored per single
   * property, so with a filter a breakdown answers only by the filtered property itself (docs/design.md
   * "Filters"); the others say so rather than ask.
   */
  const viewAnswer = async (view, at) => {
    const f = at.filter
    // Under a goal filter, a property conversions are kept by answers with them (docs/design.md
    // "Goals": conversions by another dimension); the others cannot.
    if (f?.property === 'goal' && view.property !== 'goal') {
      const metrics = GOAL_COLUMNS.filter((m) => goalMetricsOf(view.property).includes(m))
      if (metrics.length === 0)
        return {
          note: `Not available while filtered by goal: conversions are not kept by ${labelOf(view.property).toLowerCase()}.`,
        }
      const params = { ...at.base, property: view.property, metrics: metrics.join(','), limit: ROWS }
      const answer = await api('breakdown', { ...params, filters: f.raw }, at.signal)
      return { rows: answer.results, total: answer.meta.total_values, metrics }
    }
    if (f && f.property !== view.property) {
      return {
        note: `Not available while filtered by ${labelOf(f.property).toLowerCase()}: breakdowns are stored per property, so a filter applies to its own breakdown only.`,
      }
    }
    const params = { ...at.base, property: view.property, metrics: view.metrics.join(','), limit: ROWS }
    const answer = await api('breakdown', f ? { ...params, filters: f.raw } : params, at.signal)
    return { rows: answer.results, total: answer.meta.total_values }
  }
  /**
   * Sets a table's header to the metrics shown: its own (from the page) or, under a goal filter,
   * the conversion metrics.
   */
  const setHeaders = (view, metrics) => {
    const head = view.table.tHead.rows[0]
    view.headers ??= [...head.cells].map((th) => th.textContent)
    const own = metrics === view.metrics
    const texts = own ? view.headers : [view.headers[0], ...metrics.map((m) => GOAL_HEADERS[m] || m)]
    head.replaceChildren(
      ...texts.map((text) => {
        const th = document.createElement('th')
        th.textContent = text
        return th
      }),
    )
    view.table.dataset.columns = metrics.join(',')
  }
  const renderView = (view, at, answer) => {
    view.shown = at
    const metrics = answer.metrics || view.metrics
    setHeaders(view, metrics)
    view.table.dataset.state = answer.note ? 'unavailable' : 'loaded'
    const more = answer.rows && answer.total > answer.rows.length
    view.table.createCaption().textContent = more
      ? `Top ${answer.rows.length} of ${fmt.format(answer.total)} values`
      : ''
    if (answer.note) messageRow(view.table.tBodies[0], metrics.length + 1, answer.note, 'empty note')
    else fillTable(view.table, answer.rows, view.property, metrics, at.filter)
  }
  const showView = async (view, at) => {
    view.table.dataset.state = 'loading'
    const answer = await viewAnswer(view, at).catch((err) => {
      view.table.dataset.state = 'error'
      throw err
    })
    if (at !== current || at.signal.aborted) return
    renderView(view, at, answer)
  }

  let chart
  /** The legends of the chart's lines (the chart is made again when they change). */
  let chartLabels = ''
  let chartData = [[], [], []]
  let chartStatus = []
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim()
  const chartSize = () => {
    const width = $('chart').clientWidth || 300
    return { width, height: Math.max(200, Math.min(320, Math.round(width * 0.45))) }
  }
  /** Seconds between window starts (the interval of the series). */
  const windowStep = () => {
    const xs = chartData[0]
    return xs.length > 1 ? xs[1] - xs[0] : 3600
  }
  // Shades the windows that are not final: closed (stream, may still be revised) and open (counting).
  const shadeProvisional = (u) => {
    const { ctx } = u
    const xs = chartData[0]
    if (xs.length === 0) return
    const step = windowStep()
    ctx.save()
    // A point is plotted at its window's start; the window's band runs to the next start.
    ctx.beginPath()
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height)
    ctx.clip()
    for (let i = 0; i < xs.length; i++) {
      const st = chartStatus[i]
      if (st === 'final') continue
      const x0 = u.valToPos(xs[i], 'x', true)
      const x1 = u.valToPos(xs[i] + step, 'x', true)
      ctx.fillStyle = st === 'open' ? css('--open') : css('--closed')
      ctx.fillRect(x0, u.bbox.top, x1 - x0, u.bbox.height)
    }
    ctx.restore()
  }
  /**
   * Plots `lines` (the model's: pageviews and visitors, or under a goal filter total and unique
   * conversions) of the timeseries' points; `asked`: those of them the query could ask for.
   */
  const drawChart = (points, asked, lines, title) => {
    // A metric the filter does not allow (visitors by entry page) is no line rather than zeros.
    const series = (m) => points.map((p) => (asked.includes(m) ? (p[m] ?? 0) : null))
    chartData = [points.map((p) => Date.parse(p.date) / 1000), ...lines.map((l) => series(l.metric))]
    chartStatus = points.map((p) => p.status)
    $('chart-title').textContent = title
    const el = $('chart')
    el.dataset.points = String(points.length)
    el.dataset.provisional = String(points.filter((p) => p.status !== 'final').length)
    el.dataset.series = lines.map((l) => l.label).join(',')
    // Each line's sum over the points ('' for a line not asked).
    el.dataset.sums = chartData
      .slice(1)
      .map((ys, i) => (asked.includes(lines[i].metric) ? String(ys.reduce((n, y) => n + y, 0)) : ''))
      .join(',')
    if (!window.uPlot) {
      el.textContent = 'Chart library not loaded.'
      return
    }
    const labels = el.dataset.series
    if (chart && labels === chartLabels) {
      chart.setData(chartData)
      return
    }
    // Other lines (a goal filter set or removed): a chart with their legends.
    if (chart) chart.destroy()
    else new ResizeObserver(() => chart.setSize(chartSize())).observe(el)
    chartLabels = labels
    chart = new window.uPlot(
      {
        ...chartSize(),
        tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
        // The x axis runs to the end of the last window, so the current (open) one shows.
        scales: {
          x: { time: true, range: (_u, min, max) => [min, max + windowStep()] },
          y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
        },
        axes: [{}, { size: 48 }],
        series: [
          {},
          {
            label: lines[0].label,
            stroke: css('--accent'),
            fill: 'rgba(45,108,223,0.12)',
            width: 2,
            points: { show: false },
          },
          { label: lines[1].label, stroke: css('--accent2'), width: 2, points: { show: false } },
        ],
        hooks: { drawClear: [shadeProvisional] },
      },
      chartData,
      el,
    )
  }

  const describeWindows = (meta) => {
    const w = meta.windows
    const parts = [`${w.count} windows: ${w.final} final, ${w.provisional} provisional`]
    if (w.open) parts.push(`${w.open} still counting`)
    $('windows').textContent = parts.join(', ')
    $('freshness').textContent = meta.complete_through
      ? `Complete through ${utc(meta.complete_through)}: every on-time event before it is counted.`
      : 'Not complete through any time yet: the stream workers have not checkpointed.'
  }

  // --- comparison: the change in percent beside each top number ----------------------------------
  const showChanges = (agg, cards) => {
    for (const { id, metric } of cards) {
      const value = $(id)
      let badge = value.parentElement.querySelector('.change')
      if (!badge) {
        badge = document.createElement('span')
        badge.className = 'change'
        value.after(badge)
      }
      const r = agg.results[metric]
      const shown = r && 'change' in r
      badge.hidden = !shown
      if (!shown) continue
      // null: nothing to compare with (the other range had 0).
      badge.textContent =
        r.change === null ? (r.value > 0 ? 'new' : '–') : `${r.change > 0 ? '+' : ''}${r.change} %`
      badge.dataset.sign = r.change === null ? 'none' : r.change > 0 ? 'up' : r.change < 0 ? 'down' : 'flat'
      badge.title = `${fmt.format(r.comparison_value)} in ${agg.meta.comparison.from.slice(0, 10)} – ${agg.meta.comparison.to.slice(0, 10)}`
    }
  }

  // --- the top row: the model's cards, unfiltered or under a goal filter -------------------------
  const cardText = {
    bounce_rate: (v) => `${v} %`,
    visit_duration: duration,
    conversion_rate: (v) => `${v} %`,
  }
  /** Every card of either set, by the id of its value's element. */
  const cardIds = [...new Set([...MODEL.cards.all, ...MODEL.cards.goal].map((c) => c.id))]
  /** Shows `cards` (with their headings and values from `agg`) and hides the other cards. */
  const showCards = (cards, agg) => {
    for (const id of cardIds) {
      const card = $(id).closest('.card')
      const shown = cards.find((c) => c.id === id)
      card.hidden = !shown
      if (!shown) continue
      card.querySelector('h2').textContent = shown.label
      card.dataset.metric = shown.metric
      const v = agg.results[shown.metric]?.value
      $(id).textContent = v === undefined ? '–' : (cardText[shown.metric] || fmt.format)(v)
      card.classList.toggle('na', v === undefined)
    }
  }

  // --- loading --------------------------------------------------------------------------------
  /** The load being shown: its parameters, filter and abort signal (tabs picked later read with it). */
  let current
  let loadCtl
  const load = async () => {
    const { site, range, filter: raw, compare } = state()
    if (!site) return
    loadCtl?.abort()
    const ctl = new AbortController()
    loadCtl = ctl
    const filter = filterOf(raw)
    const at = { site, base: { site, period: range }, filter, signal: ctl.signal }
    current = at
    showFilter(filter)
    const filtered = (params) => (filter ? { ...params, filters: filter.raw } : params)
    try {
      await loadProps(site, ctl.signal)
    } catch (err) {
      if (err.name === 'AbortError') return
      // A query role without a site store (501) has no panel; other errors are the stats calls' too.
      $('props-panel').hidden = true
      if (err.status !== 501) failed(err, site)
    }
    // A filter on a property restricts the metrics to those its rows hold (query/params.ts).
    const allowed = (metrics) =>
      filter ? metrics.filter((m) => metricsOf(filter.property)?.includes(m)) : metrics
    // Under a goal filter the top row and the chart are the goal's conversions (as in Plausible).
    const byGoal = filter?.property === 'goal'
    const cards = byGoal ? MODEL.cards.goal : MODEL.cards.all
    const chartLines = byGoal ? MODEL.lines.goal : MODEL.lines.all
    const totals = allowed(cards.map((c) => c.metric))
    const lines = allowed(chartLines.map((l) => l.metric))
    // The filtered property's own tab is the one that can answer: it is shown.
    if (filter)
      for (const p of panels) {
        const own = p.views.find((v) => v.property === filter.property)
        if (own) p.show(own)
      }
    const shown = panels.map((p) => p.active)
    try {
      const [agg, series, ...answers] = await Promise.all([
        api(
          'aggregate',
          filtered({ ...at.base, metrics: totals.join(','), ...(compare ? { compare } : {}) }),
          ctl.signal,
        ),
        api('timeseries', filtered({ ...at.base, metrics: lines.join(',') }), ctl.signal),
        ...shown.map((v) => viewAnswer(v, at)),
      ])
      if (ctl.signal.aborted) return
      showCards(cards, agg)
      showChanges(agg, cards)
      const missing = agg.meta.visits?.windows_without_data ?? 0
      // Windows written before visits were counted show none until rebuilt.
      $('visits-note').textContent = missing > 0 ? `${missing} windows without visit data` : ''
      // The first card's metric (visitors, or a goal's converters) is a HyperLogLog estimate.
      const bound = agg.meta.metrics?.[cards[0]?.metric]?.error_bound
      $('visitors-note').textContent = bound ? `estimate, ±${(bound * 100).toFixed(1)} %` : ''
      const absent = cards.map((c) => c.metric).filter((m) => !totals.includes(m))
      $('filter-note').textContent = filter
        ? [
            absent.length > 0
              ? `${capital(absent.map((m) => METRIC_LABELS[m]).join(', '))}: not counted by ${labelOf(filter.property).toLowerCase()}.`
              : '',
            byGoal ? 'Conversion rate: percent of all visitors in the range.' : '',
            'Visitors now: all traffic.',
          ]
            .filter(Boolean)
            .join(' ')
        : ''
      drawChart(
        series.results,
        lines,
        chartLines,
        byGoal ? 'Unique and total conversions' : 'Pageviews and visitors',
      )
      describeWindows(series.meta)
      // Hidden tabs hold an earlier load's rows: they are read again when picked.
      for (const v of panels.flatMap((p) => p.views)) if (v.shown !== at) v.shown = undefined
      shown.forEach((v, i) => {
        renderView(v, at, answers[i])
      })
      document.body.dataset.loaded = site
      document.body.dataset.filter = filter ? filter.raw : ''
      status('')
    } catch (err) {
      if (err.name === 'AbortError') return
      failed(err, site)
    }
  }

  const showFilter = (filter) => {
    $('filter-bar').hidden = !filter
    $('filter-label').replaceChildren(
      ...(filter ? [`${labelOf(filter.property)} is `, ...displayNodes(filter.property, filter.value)] : []),
    )
  }
  const setFilter = (raw) => {
    setState({ filter: raw })
    load()
  }

  const realtime = async () => {
    const { site } = state()
    if (!site || document.hidden) return
    try {
      const r = await api('realtime', { site, minutes: REALTIME_MINUTES, metrics: 'visitors,pageviews' })
      if (state().site !== site) return
      $('realtime').textContent = fmt.format(r.results.visitors.value)
      $('realtime-note').textContent =
        `last ${REALTIME_MINUTES} minutes · ${fmt.format(r.results.pageviews.value)} pageviews · ${new Date().toLocaleTimeString()}`
    } catch (err) {
      failed(err, site)
    }
  }

  const failed = (err, site) => {
    if (err.status === 401 || err.status === 403) {
      status(
        `The read token for ${site} was refused (${err.code || err.status}). Add it again under Sites & tokens.`,
        true,
      )
    } else status(`Could not load ${site}: ${err.message}`, true)
  }

  // --- controls -------------------------------------------------------------------------------
  const renderSites = () => {
    const list = sites()
    const select = $('site')
    select.replaceChildren(
      ...list.map((s) => {
        const o = document.createElement('option')
        o.value = s.site
        o.textContent = s.site
        return o
      }),
    )
    const ul = $('site-list')
    ul.replaceChildren(
      ...list.map((s) => {
        const li = document.createElement('li')
        li.textContent = `${s.site} ${s.remembered ? '(remembered)' : '(this session)'} `
        const rm = document.createElement('button')
        rm.type = 'button'
        rm.className = 'link'
        rm.textContent = 'remove'
        rm.addEventListener('click', () => {
          removeSite(s.site)
          if (state().site === s.site) setState({ site: sites()[0]?.site || '' })
          refresh()
        })
        li.append(rm)
        return li
      }),
    )
    let { site } = state()
    if (!list.some((s) => s.site === site)) {
      site = list[0]?.site || ''
      setState({ site })
    }
    select.value = site
    $('range').value = state().range
    $('compare').value = state().compare
    if (list.length === 0) {
      showSites(true)
      status('Add a site id and its read token (`tally sites token <site>`) to see its numbers.')
    }
  }
  const showSites = (show) => {
    $('sites').hidden = !show
    $('manage').setAttribute('aria-expanded', String(show))
  }
  const refresh = () => {
    renderSites()
    load()
    realtime()
  }

  $('manage').addEventListener('click', () => showSites($('sites').hidden))
  $('clear-filter').addEventListener('click', () => setFilter(''))
  $('site').addEventListener('change', (e) => {
    setState({ site: e.target.value, filter: '' })
    $('realtime').textContent = '–'
    refresh()
  })
  $('range').addEventListener('change', (e) => {
    setState({ range: e.target.value })
    load()
  })
  $('compare').addEventListener('change', (e) => {
    setState({ compare: e.target.value })
    load()
  })
  $('add-site').addEventListener('submit', (e) => {
    e.preventDefault()
    const site = $('new-site').value.trim()
    const token = $('new-token').value.trim()
    if (!site || !token) return
    saveSite(site, token, $('remember').checked)
    e.target.reset()
    setState({ site })
    showSites(false)
    refresh()
  })
  // Download CSV: the timeseries of the site and range (format=csv), fetched with the read token
  // (a plain link could not send it) and handed to the browser as a file. Under a filter, the
  // filtered one: a goal's top-row conversion metrics per point (the chart then plots conversions),
  // another property's traffic metrics that its rows hold.
  $('download-csv').addEventListener('click', async () => {
    const { site, range, filter: raw } = state()
    const entry = sites().find((s) => s.site === site)
    if (!entry) return status(`no read token for ${site}`, true)
    const filter = filterOf(raw)
    const traffic = ['visitors', 'pageviews', 'events']
    const metrics =
      filter?.property === 'goal'
        ? MODEL.cards.goal.map((c) => c.metric)
        : filter
          ? traffic.filter((m) => metricsOf(filter.property)?.includes(m))
          : traffic
    const params = {
      site,
      period: range,
      ...(filter ? { filters: filter.raw } : {}),
      metrics: metrics.join(','),
      format: 'csv',
    }
    const res = await fetch(`/v1/stats/timeseries?${new URLSearchParams(params)}`, {
      headers: { authorization: `Bearer ${entry.token}` },
      cache: 'no-store',
    }).catch((err) => ({ ok: false, status: 0, json: async () => ({ message: String(err) }) }))
    if (!res.ok) {
      const body = await res.json().catch(() => undefined)
      return status(body?.message || `CSV download failed (HTTP ${res.status})`, true)
    }
    const url = URL.createObjectURL(await res.blob())
    const a = document.createElement('a')
    a.href = url
    a.download = `${site}-${range}.csv`.replace(/[^A-Za-z0-9._-]/g, '_')
    a.click()
    setTimeout(() => URL.revokeObjectURL(url), 10_000)
  })
  window.addEventListener('hashchange', refresh)
  document.addEventListener('visibilitychange', () => !document.hidden && realtime())
  setInterval(realtime, REALTIME_EVERY_MS)
  setInterval(() => !document.hidden && load(), REFRESH_EVERY_MS)
  refresh()
})()
