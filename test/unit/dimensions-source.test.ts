import { describe, expect, it } from 'vitest'
import { dimensionsOf } from '../../core/aggregate/definition.js'
import { classifySource } from '../../core/aggregate/source.js'
import type { RawEventV1 } from '../../schemas/events.js'

function page(url: string, referrer?: string, campaign?: Record<string, string>): RawEventV1 {
  const context: Record<string, unknown> = { page: { url, ...(referrer !== undefined ? { referrer } : {}) } }
  if (campaign) context.campaign = campaign
  return {
    v: 1,
    siteId: 's',
    messageId: 'm',
    messageIdAssigned: false,
    type: 'page',
    anonymousId: 'a',
    properties: {},
    context,
    timestamp: '2026-03-01T12:00:00.000Z',
    receivedAt: '2026-03-01T12:00:00.000Z',
    ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
    bot: false,
  }
}

const SITE = 'https://shop.example/products/1'

describe('source and channel (referrer database + UTM, GA4 channel rules)', () => {
  // [page URL, referrer, campaign, source, channel]
  const cases: Array<[string, string | undefined, Record<string, string> | undefined, string, string]> = [
    // Search engines
    [SITE, 'https://www.google.com/', undefined, 'Google', 'Organic Search'],
    [SITE, 'https://www.google.co.uk/search?q=shop', undefined, 'Google', 'Organic Search'],
    [SITE, 'https://www.bing.com/search?q=tally+analytics', undefined, 'Bing', 'Organic Search'],
    [SITE, 'https://duckduckgo.com/', undefined, 'DuckDuckGo', 'Organic Search'],
    [SITE, 'https://search.yahoo.com/search?p=x', undefined, 'Yahoo!', 'Organic Search'],
    [SITE, 'https://yandex.ru/search/?text=x', undefined, 'Yandex', 'Organic Search'],
    // Social networks (a subdomain falls back to its parent domain)
    [SITE, 'https://news.ycombinator.com/item?id=40123456', undefined, 'Hacker News', 'Organic Social'],
    [SITE, 'https://t.co/Ab12Cd34', undefined, 'Twitter', 'Organic Social'],
    [SITE, 'https://l.facebook.com/l.php?u=x', undefined, 'Facebook', 'Organic Social'],
    [SITE, 'https://old.reddit.com/r/analytics/', undefined, 'Reddit', 'Organic Social'],
    [SITE, 'https://www.linkedin.com/feed/', undefined, 'LinkedIn', 'Organic Social'],
    // Webmail
    [SITE, 'https://mail.google.com/mail/u/0/', undefined, 'Gmail', 'Email'],
    [SITE, 'https://outlook.live.com/mail/0/inbox', undefined, 'Outlook.com', 'Email'],
    // UTM: utm_source names the source, utm_medium decides paid / email / social / affiliate
    [
      `${SITE}?utm_source=google&utm_medium=cpc`,
      'https://www.google.com/',
      undefined,
      'Google',
      'Paid Search',
    ],
    [`${SITE}?gclid=Cj0KCQ`, 'https://www.google.com/', undefined, 'Google', 'Paid Search'],
    [`${SITE}?gclid=Cj0KCQ`, undefined, undefined, 'Google', 'Paid Search'],
    [`${SITE}?msclkid=abc`, 'https://www.bing.com/', undefined, 'Bing', 'Paid Search'],
    [
      SITE,
      'https://l.facebook.com/',
      { source: 'facebook', medium: 'paid_social' },
      'Facebook',
      'Paid Social',
    ],
    [SITE, undefined, { source: 'newsletter', medium: 'email', name: 'weekly' }, 'newsletter', 'Email'],
    [
      `${SITE}?utm_source=partner-blog&utm_medium=affiliate`,
      undefined,
      undefined,
      'partner-blog',
      'Affiliates',
    ],
    [`${SITE}?utm_source=bannerco&utm_medium=banner`, undefined, undefined, 'bannerco', 'Display'],
    [`${SITE}?utm_source=bannerco&utm_medium=cpm`, undefined, undefined, 'bannerco', 'Display'],
    [`${SITE}?utm_source=someone&utm_medium=paid`, undefined, undefined, 'someone', 'Paid Other'],
    [
      `${SITE}?utm_source=twitter&utm_medium=social`,
      'https://t.co/x',
      undefined,
      'Twitter',
      'Organic Social',
    ],
    [`${SITE}?utm_source=podcast&utm_medium=audio`, undefined, undefined, 'podcast', 'Unassigned'],
    // utm_source overrides the referrer
    [`${SITE}?utm_source=newsletter`, 'https://news.ycombinator.com/', undefined, 'newsletter', 'Referral'],
    // Self-referral: the site's own host is no source
    [SITE, 'https://shop.example/cart', undefined, 'Direct / None', 'Direct'],
    [SITE, 'https://www.shop.example/', undefined, 'Direct / None', 'Direct'],
    // Unknown host: its own source, Referral
    [SITE, 'https://blog.someone.example/post/1', undefined, 'blog.someone.example', 'Referral'],
    // Malformed or empty referrer, no UTM: direct
    [SITE, 'not a url', undefined, 'Direct / None', 'Direct'],
    [SITE, '', undefined, 'Direct / None', 'Direct'],
    [SITE, undefined, undefined, 'Direct / None', 'Direct'],
    ['::not a url::', undefined, undefined, 'Direct / None', 'Direct'],
  ]
  it.each(cases)('%s from %s %o → %s / %s', (url, referrer, campaign, source, channel) => {
    const d = dimensionsOf(page(url, referrer, campaign))
    expect([d.source, d.channel]).toEqual([source, channel])
  })

  it('reads the whole UTM set from context.campaign, else from the page URL', () => {
    const fromUrl = dimensionsOf(
      page(`${SITE}?utm_source=g&utm_medium=cpc&utm_campaign=spring&utm_content=ad_a&utm_term=web+analytics`),
    )
    expect(fromUrl).toMatchObject({
      utm_source: 'g',
      utm_medium: 'cpc',
      utm_campaign: 'spring',
      utm_content: 'ad_a',
      utm_term: 'web analytics',
    })
    const fromContext = dimensionsOf(
      page(`${SITE}?utm_campaign=ignored`, undefined, {
        source: 'news',
        medium: 'email',
        name: 'launch',
        content: 'footer',
        term: 'tally',
      }),
    )
    expect(fromContext).toMatchObject({
      utm_source: 'news',
      utm_medium: 'email',
      utm_campaign: 'launch',
      utm_content: 'footer',
      utm_term: 'tally',
    })
    expect(dimensionsOf(page(SITE))).toMatchObject({
      utm_medium: '(none)',
      utm_campaign: '(none)',
      utm_content: '(none)',
      utm_term: '(none)',
      country: '(unknown)',
    })
  })

  it('keeps the referrer dimension as the host', () => {
    expect(dimensionsOf(page(SITE, 'https://www.google.com/search?q=x')).referrer).toBe('google.com')
  })

  it('names a known utm_source by its database name, by name or by host', () => {
    const c = (utmSource: string) =>
      classifySource({
        referrerHost: undefined,
        pageHost: undefined,
        utmSource,
        utmMedium: undefined,
        clickId: undefined,
      })
    expect(c('google').source).toBe('Google')
    expect(c('www.facebook.com').source).toBe('Facebook')
    expect(c('Hacker News')).toEqual({ source: 'Hacker News', channel: 'Organic Social' })
  })
})
