/**
 * The one dependency rule of the README's "Architecture" section, checked by `npm run depcheck`
 * (a phase of .ci/run): arrows point down, app → roles → kernel and adapters (core/) → schemas.
 */
const ROLES = '(ingest|stream|batch|query)'
const ABOVE_CORE = '(ingest|stream|batch|query|app)'

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'core-imports-upward',
      comment: 'core/ (kernel and adapters) imports neither a role nor app/: it is below both.',
      severity: 'error',
      from: { path: '^core/' },
      to: { path: `^${ABOVE_CORE}/` },
    },
    {
      name: 'role-imports-role',
      comment: 'A role imports no other role: what two roles share belongs in core/ or schemas/.',
      severity: 'error',
      from: { path: `^${ROLES}/` },
      to: { path: `^${ROLES}/`, pathNot: '^$1/' },
    },
    {
      name: 'role-imports-app',
      comment: 'A role imports nothing from app/, the composition root above it.',
      severity: 'error',
      from: { path: `^${ROLES}/` },
      to: { path: '^app/' },
    },
    {
      name: 'role-imports-adapter',
      comment: 'Roles take ports (core/ports): only app/ names Kafka, Cassandra or the embedded backend.',
      severity: 'error',
      from: { path: `^${ROLES}/` },
      to: { path: '^core/(kafka|cassandra|embedded)/' },
    },
    {
      name: 'schemas-imports-upward',
      comment: 'schemas/ is the contract every layer shares: it imports nothing above the kernel.',
      severity: 'error',
      from: { path: '^schemas/' },
      to: { path: `^${ABOVE_CORE}/` },
    },
    {
      name: 'no-circular',
      comment: 'No import cycle.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)(node_modules|dist)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js', '.mjs', '.cjs'] },
  },
}
