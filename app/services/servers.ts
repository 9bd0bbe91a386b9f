import { existsSync } from 'node:fs'
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describeCassandra } from '../../core/cassandra/client.js'
import type { ServicesConfig } from '../../core/config.js'
import { describeKafka } from '../../core/kafka/client.js'
import { type Artifact, cassandraArtifact, kafkaArtifact } from './fetch.js'

/** What the manager needs to know to run one local server. */
export interface ServerSpec {
  name: 'kafka' | 'cassandra'
  artifact: Artifact
  /** Ports that must be free before start (the first is the client port). */
  ports: readonly number[]
  /** Text that identifies this server's process in /proc/PID/cmdline. */
  mainClass: string
  /** Writes config files and prepares storage; returns the java arguments. */
  prepare(lib: string, java: string, runJava: RunJava): Promise<string[]>
  /** Resolves with a version string once the server really answers; throws while it does not. */
  probe(timeoutMs: number): Promise<string>
}

export type RunJava = (args: readonly string[]) => Promise<{ code: number; output: string }>

// A fixed cluster id: the storage is local and formatted once per run folder.
const KAFKA_CLUSTER_ID = 'VGFsbHlMb2NhbEthZmthMQ'

export function kafkaServer(cfg: ServicesConfig): ServerSpec {
  const dir = join(cfg.runDir, 'kafka')
  const props = join(dir, 'server.properties')
  const log4j = join(dir, 'log4j.properties')
  return {
    name: 'kafka',
    artifact: kafkaArtifact(cfg.kafkaVersion),
    ports: [cfg.kafkaPort, cfg.kafkaControllerPort],
    mainClass: 'kafka.Kafka',
    async prepare(lib, _java, runJava) {
      await mkdir(join(dir, 'data'), { recursive: true })
      await writeFile(
        props,
        [
          'process.roles=broker,controller',
          'node.id=1',
          `controller.quorum.voters=1@127.0.0.1:${cfg.kafkaControllerPort}`,
          `listeners=PLAINTEXT://127.0.0.1:${cfg.kafkaPort},CONTROLLER://127.0.0.1:${cfg.kafkaControllerPort}`,
          `advertised.listeners=PLAINTEXT://127.0.0.1:${cfg.kafkaPort}`,
          'controller.listener.names=CONTROLLER',
          'inter.broker.listener.name=PLAINTEXT',
          'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
          `log.dirs=${join(dir, 'data')}`,
          'num.partitions=1',
          'offsets.topic.replication.factor=1',
          'offsets.topic.num.partitions=10',
          'transaction.state.log.replication.factor=1',
          'transaction.state.log.min.isr=1',
          'group.initial.rebalance.delay.ms=0',
          'auto.create.topics.enable=false',
          'delete.topic.enable=true',
          '',
        ].join('\n'),
      )
      await writeFile(
        log4j,
        [
          'log4j.rootLogger=INFO, stdout',
          'log4j.appender.stdout=org.apache.log4j.ConsoleAppender',
          'log4j.appender.stdout.layout=org.apache.log4j.PatternLayout',
          'log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n',
          'log4j.logger.kafka=INFO',
          'log4j.logger.org.apache.kafka=INFO',
          'log4j.logger.state.change.logger=WARN',
          '',
        ].join('\n'),
      )
      const logArg = `-Dlog4j.configuration=file:${log4j}`
      if (!existsSync(join(dir, 'data', 'meta.properties'))) {
        const res = await runJava([
          logArg,
          '-cp',
          `${lib}/*`,
          'kafka.tools.StorageTool',
          'format',
          '-t',
          KAFKA_CLUSTER_ID,
          '-c',
          props,
          '--ignore-formatted',
        ])
        if (res.code !== 0)
          throw new Error(`kafka storage format failed (exit ${res.code}): ${res.output.slice(-1500)}`)
      }
      return [
        '-Xms256m',
        '-Xmx512m',
        '-XX:+UseG1GC',
        '-Djava.awt.headless=true',
        logArg,
        '-cp',
        `${lib}/*`,
        'kafka.Kafka',
        props,
      ]
    },
    async probe(timeoutMs) {
      const info = await describeKafka([`127.0.0.1:${cfg.kafkaPort}`], timeoutMs)
      if (info.brokers < 1) throw new Error('kafka answered without brokers')
      return cfg.kafkaVersion
    },
  }
}

// Cassandra 5.0's conf/jvm-server.options and conf/jvm17-server.options, as the server needs on JDK 17.
const CASSANDRA_JVM17 = [
  '-Xss256k',
  '-XX:+UseG1GC',
  '-XX:+ParallelRefProcEnabled',
  '-XX:MaxTenuringThreshold=1',
  '-XX:G1HeapRegionSize=16m',
  '-ea',
  '-da:net.openhft...',
  '-Djava.net.preferIPv4Stack=true',
  '-Djdk.attach.allowAttachSelf=true',
  '--add-exports',
  'java.base/jdk.internal.misc=ALL-UNNAMED',
  '--add-exports',
  'java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED',
  '--add-exports',
  'java.rmi/sun.rmi.registry=ALL-UNNAMED',
  '--add-exports',
  'java.rmi/sun.rmi.server=ALL-UNNAMED',
  '--add-exports',
  'java.sql/java.sql=ALL-UNNAMED',
  '--add-exports',
  'java.base/java.lang.ref=ALL-UNNAMED',
  '--add-exports',
  'jdk.unsupported/sun.misc=ALL-UNNAMED',
  '--add-exports',
  'jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED',
  '--add-exports',
  'jdk.attach/sun.tools.attach=ALL-UNNAMED',
  '--add-opens',
  'java.base/java.lang.module=ALL-UNNAMED',
  '--add-opens',
  'java.base/jdk.internal.loader=ALL-UNNAMED',
  '--add-opens',
  'java.base/jdk.internal.ref=ALL-UNNAMED',
  '--add-opens',
  'java.base/jdk.internal.reflect=ALL-UNNAMED',
  '--add-opens',
  'java.base/jdk.internal.math=ALL-UNNAMED',
  '--add-opens',
  'java.base/jdk.internal.module=ALL-UNNAMED',
  '--add-opens',
  'java.base/jdk.internal.util.jar=ALL-UNNAMED',
  '--add-opens',
  'jdk.management/com.sun.management.internal=ALL-UNNAMED',
  '--add-opens',
  'java.base/sun.nio.ch=ALL-UNNAMED',
  '--add-opens',
  'java.base/java.io=ALL-UNNAMED',
  '--add-opens',
  'java.base/java.lang.reflect=ALL-UNNAMED',
  '--add-opens',
  'jdk.compiler/com.sun.tools.javac=ALL-UNNAMED',
  '--add-opens',
  'java.base/java.lang=ALL-UNNAMED',
  '--add-opens',
  'java.base/java.util=ALL-UNNAMED',
  '-Dio.netty.tryReflectionSetAccessible=true',
  '-Dio.netty.allocator.useCacheForAllThreads=true',
  '-Dio.netty.allocator.maxOrder=11',
]

export function cassandraServer(cfg: ServicesConfig): ServerSpec {
  const dir = join(cfg.runDir, 'cassandra')
  const yaml = join(dir, 'cassandra.yaml')
  const logback = join(dir, 'logback.xml')
  return {
    name: 'cassandra',
    artifact: cassandraArtifact(cfg.cassandraVersion),
    ports: [cfg.cassandraPort, cfg.cassandraStoragePort, cfg.cassandraJmxPort],
    mainClass: 'org.apache.cassandra.service.CassandraDaemon',
    async prepare(lib) {
      await mkdir(join(dir, 'data', 'logs'), { recursive: true })
      await writeFile(
        yaml,
        `cluster_name: tally-local
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: ${cfg.cassandraStoragePort}
native_transport_port: ${cfg.cassandraPort}
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:${cfg.cassandraStoragePort}"
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10000ms
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
auto_snapshot: false
snapshot_before_compaction: false
concurrent_compactors: 1
`,
      )
      await writeFile(
        logback,
        `<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
</configuration>
`,
      )
      const jamm = (await readdir(lib)).find((f) => /^jamm-.*\.jar$/.test(f))
      if (!jamm)
        throw new Error(
          `no jamm jar in ${lib}: the Cassandra fetch is incomplete; delete the folder and retry`,
        )
      return [
        '-Xms1G',
        '-Xmx1G',
        ...CASSANDRA_JVM17,
        `-javaagent:${join(lib, jamm)}`,
        `-Dcassandra.config=file://${yaml}`,
        '-Dcassandra-foreground=yes',
        `-Dcassandra.storagedir=${join(dir, 'data')}`,
        `-Dcassandra.logdir=${join(dir, 'data', 'logs')}`,
        `-Dlogback.configurationFile=${logback}`,
        `-Dcassandra.jmx.local.port=${cfg.cassandraJmxPort}`,
        '-Dcassandra.skip_wait_for_gossip_to_settle=0',
        '-Dcassandra.ring_delay_ms=1000',
        '-Dcassandra.load_ring_state=false',
        '-Dcassandra.initial_token=0',
        '-Dcassandra.ignore_kernel_bug_1057843_check=true',
        '-cp',
        `${lib}/*`,
        'org.apache.cassandra.service.CassandraDaemon',
      ]
    },
    probe(timeoutMs) {
      return describeCassandra([`127.0.0.1:${cfg.cassandraPort}`], 'datacenter1', timeoutMs)
    },
  }
}
