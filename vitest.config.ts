import { defineConfig } from 'vitest/config'

/**
 * The soak (test/soak/, minutes long, restarts a Cassandra node of its own) runs only when asked:
 * `npm run test:soak` sets TALLY_SOAK=1; `npm test` never includes it.
 */
const soak = process.env.TALLY_SOAK === '1'

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          globalSetup: ['test/integration/global-setup.ts'],
          // Real Kafka and Cassandra on 2 cores: files run one at a time, names keep them apart.
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 300_000,
        },
      },
      ...(soak
        ? [
            {
              test: {
                name: 'soak',
                include: ['test/soak/**/*.test.ts'],
                globalSetup: ['test/integration/global-setup.ts'],
                fileParallelism: false,
                // TALLY_SOAK_SECONDS of load, then bounded waits for the stream and the archive.
                testTimeout: (Number(process.env.TALLY_SOAK_SECONDS ?? 180) + 900) * 1000,
                hookTimeout: 600_000,
              },
            },
          ]
        : []),
    ],
  },
})
