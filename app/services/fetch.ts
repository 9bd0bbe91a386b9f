import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'

/** A Java server published on Maven Central, fetched with Maven into the services cache. */
export interface Artifact {
  name: 'kafka' | 'cassandra' | 'kafka-streams'
  version: string
  /** groupId:artifactId:version of every runtime dependency to copy. */
  coordinates: readonly string[]
}

export function kafkaArtifact(version: string): Artifact {
  // Kafka 3.9 ships no logging backend in its runtime scope; reload4j is the one it was built for.
  return {
    name: 'kafka',
    version,
    coordinates: [`org.apache.kafka:kafka_2.13:${version}`, 'org.slf4j:slf4j-reload4j:1.7.36'],
  }
}

export function cassandraArtifact(version: string): Artifact {
  return { name: 'cassandra', version, coordinates: [`org.apache.cassandra:cassandra-all:${version}`] }
}

/** The lib folder of an artifact in the cache (one folder per server and version, never shared). */
export function libDir(cacheDir: string, artifact: Artifact): string {
  return join(cacheDir, `${artifact.name}-${artifact.version}`, 'lib')
}

function pom(artifact: Artifact): string {
  const deps = artifact.coordinates
    .map((c) => {
      const [g, a, v] = c.split(':')
      return `    <dependency><groupId>${g}</groupId><artifactId>${a}</artifactId><version>${v}</version></dependency>`
    })
    .join('\n')
  return `<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by tally services: only copies the runtime dependencies of ${artifact.name} ${artifact.version}. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.tally.services</groupId>
  <artifactId>${artifact.name}-runtime</artifactId>
  <version>${artifact.version}</version>
  <packaging>pom</packaging>
  <dependencies>
${deps}
  </dependencies>
</project>
`
}

function run(cmd: string, args: readonly string[], cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? 1, output }))
  })
}

/**
 * Makes sure the jars of `artifact` are in the cache; fetches them with Maven the first time.
 * The copy goes to a temporary folder that is renamed into place, so an interrupted fetch never
 * leaves a half-filled lib folder that later runs would trust.
 */
export async function ensureArtifact(
  cacheDir: string,
  artifact: Artifact,
  log: (line: string) => void,
): Promise<string> {
  const lib = libDir(cacheDir, artifact)
  if (existsSync(join(lib, '.complete'))) return lib
  const base = join(cacheDir, `${artifact.name}-${artifact.version}`)
  const work = join(cacheDir, `.fetch-${artifact.name}-${artifact.version}-${process.pid}`)
  await rm(work, { recursive: true, force: true })
  await mkdir(work, { recursive: true })
  await writeFile(join(work, 'pom.xml'), pom(artifact))
  log(`fetching ${artifact.name} ${artifact.version} from Maven Central into ${base} (first run only)`)
  let result: { code: number; output: string }
  try {
    result = await run(
      'mvn',
      [
        '-B',
        '-q',
        '-f',
        join(work, 'pom.xml'),
        'org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies',
        '-DincludeScope=runtime',
        `-DoutputDirectory=${join(work, 'lib')}`,
      ],
      work,
    )
  } catch (err) {
    throw new TallyError(
      ERR.SERVICES_FETCH,
      `cannot run Maven (mvn) to fetch ${artifact.name}: ${(err as Error).message}; install Maven or point KAFKA_BROKERS / CASSANDRA_CONTACT_POINTS at running servers`,
      { cause: err },
    )
  }
  if (result.code !== 0) {
    throw new TallyError(
      ERR.SERVICES_FETCH,
      `Maven could not fetch ${artifact.name} ${artifact.version} (exit ${result.code}):\n${result.output.slice(-2000)}`,
    )
  }
  const jars = (await readdir(join(work, 'lib'))).filter((f) => f.endsWith('.jar'))
  await writeFile(join(work, 'lib', '.complete'), `${jars.length} jars\n`)
  await rm(base, { recursive: true, force: true })
  await mkdir(base, { recursive: true })
  await rename(join(work, 'lib'), lib)
  await rm(work, { recursive: true, force: true })
  log(`fetched ${jars.length} jars for ${artifact.name} ${artifact.version}`)
  return lib
}
