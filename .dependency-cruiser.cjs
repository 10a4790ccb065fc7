// The import rules `npm run lint` checks: no cycle between files (type-only imports count), core imports nothing of ours.
// Cycles between the top-level folders of src/ are found by scripts/folder-cycles.mjs from this cruise's JSON.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'No import cycle between files; `import type` counts (tsPreCompilationDeps keeps type-only imports).',
      from: {},
      to: { circular: true },
    },
    {
      name: 'core-is-a-leaf',
      severity: 'error',
      comment: 'src/core holds the shared types and the logger: it imports node and npm packages only.',
      from: { path: '^src/core/' },
      to: { path: '^src/', pathNot: '^src/core/' },
    },
    {
      name: 'shipped-code-not-to-tests',
      severity: 'error',
      comment: 'Nothing shipped imports a test or src/testkit (so the folder check can leave tests out: they sit above everything).',
      from: { path: '^src/', pathNot: '^src/testkit/|[.](test|scenarios|ktls-test)[.]ts$' },
      to: { path: '^src/testkit/|[.](test|scenarios|ktls-test)[.]ts$' },
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      comment: 'An import that resolves to nothing (a moved file) is a mistake.',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      extensions: ['.ts', '.js', '.mjs', '.cjs', '.d.ts'],
    },
  },
};
