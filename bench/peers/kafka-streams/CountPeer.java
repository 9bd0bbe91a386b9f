import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.ByteBuffer;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The Kafka Streams peer of the stream benchmark (bench/peers/kafka-streams.ts compiles and runs
 * it): one Kafka Streams instance reads the raw topic Tally's worker read, unpacks each record's
 * events (format 1 or 2), parses each event's JSON (Jackson) and counts two aggregates in RocksDB state stores — events per site-minute
 * and per site-hour-path — with the processing guarantee given (exactly_once_v2 or
 * at_least_once). It keeps no HyperLogLog, no dedup, no bot filter and no breakdowns beyond those
 * two: it is the framework's cost for the simplest part of Tally's work.
 *
 * Environment: BROKERS, TOPIC, APP_ID, GUARANTEE, EXPECT (events in the topic), STATE_DIR,
 * TIMEOUT_MS, THREADS. Prints one JSON line when both aggregates have taken EXPECT records and the
 * instance has closed (its last commit included): times in ms from the JVM's start of work.
 */
public final class CountPeer {
  private static final ObjectMapper JSON = new ObjectMapper();

  private static String env(String name, String fallback) {
    String v = System.getenv(name);
    if (v == null || v.isEmpty()) {
      if (fallback == null) throw new IllegalArgumentException("set " + name);
      return fallback;
    }
    return v;
  }

  /** The fields both aggregates need: site, event time (ms) and the page path ("" for none). */
  private record Parsed(String site, long timeMs, String path) {}

  /**
   * The events of one record of the raw log: format 1 is one event, its value the JSON; format 2
   * (core/record/packed.ts) starts with the byte 2 and frames many, each as u16 header-set index,
   * f64 timestamp, u16-length key, u32-length JSON, after the record's header sets.
   */
  private static List<Parsed> events(byte[] value) {
    if (value == null || value.length == 0) return List.of();
    if (value[0] != 2) return List.of(parse(value, 0, value.length));
    ByteBuffer b = ByteBuffer.wrap(value);
    try {
      b.get();
      int sets = Short.toUnsignedInt(b.getShort());
      for (int s = 0; s < sets; s++) {
        int pairs = Short.toUnsignedInt(b.getShort());
        for (int p = 0; p < 2 * pairs; p++) skip(b, Short.toUnsignedInt(b.getShort()));
      }
      long n = Integer.toUnsignedLong(b.getInt());
      List<Parsed> out = new ArrayList<>((int) Math.min(n, 65_535));
      for (long i = 0; i < n; i++) {
        skip(b, 2 + 8);
        skip(b, Short.toUnsignedInt(b.getShort()));
        int len = b.getInt();
        out.add(parse(value, b.position(), len));
        b.position(b.position() + len);
      }
      return out;
    } catch (RuntimeException cut) {
      return List.of(new Parsed("(undecodable)", 0L, ""));
    }
  }

  /** Moves past `n` bytes (read the length first: `position() + getShort()` would read the position before the length). */
  private static void skip(ByteBuffer b, int n) {
    b.position(b.position() + n);
  }

  private static Parsed parse(byte[] value, int offset, int length) {
    try {
      JsonNode e = JSON.readTree(value, offset, length);
      String site = e.path("siteId").asText("");
      long timeMs = Instant.parse(e.path("timestamp").asText()).toEpochMilli();
      String path = e.path("properties").path("path").asText("");
      if (path.isEmpty()) path = e.path("context").path("page").path("path").asText("");
      return new Parsed(site, timeMs, path);
    } catch (Exception err) {
      return new Parsed("(undecodable)", 0L, "");
    }
  }

  public static void main(String[] args) throws Exception {
    final long expect = Long.parseLong(env("EXPECT", null));
    final long timeoutMs = Long.parseLong(env("TIMEOUT_MS", "300000"));
    final String guarantee = env("GUARANTEE", "exactly_once_v2");
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, env("APP_ID", null));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env("BROKERS", "127.0.0.1:9092"));
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
    p.put(StreamsConfig.STATE_DIR_CONFIG, env("STATE_DIR", null));
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(env("THREADS", "1")));
    p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
    p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

    final long t0 = System.nanoTime();
    final AtomicLong first = new AtomicLong(-1);
    final AtomicLong minuteCounted = new AtomicLong();
    final AtomicLong pathCounted = new AtomicLong();

    StreamsBuilder b = new StreamsBuilder();
    KStream<Bytes, Parsed> events =
        b.stream(env("TOPIC", null), Consumed.with(Serdes.Bytes(), Serdes.ByteArray()))
            .flatMapValues(
                v -> {
                  first.compareAndSet(-1, System.nanoTime());
                  return events(v);
                });
    events
        .map((k, e) -> new org.apache.kafka.streams.KeyValue<>(e.site() + "|" + (e.timeMs() / 60_000L), 1L))
        .groupByKey(Grouped.with(Serdes.String(), Serdes.Long()))
        .aggregate(
            () -> 0L,
            (k, one, sum) -> {
              minuteCounted.incrementAndGet();
              return sum + one;
            },
            Materialized.<String, Long, KeyValueStore<Bytes, byte[]>>as("site-minute")
                .withKeySerde(Serdes.String())
                .withValueSerde(Serdes.Long()));
    events
        .map(
            (k, e) ->
                new org.apache.kafka.streams.KeyValue<>(
                    e.site() + "|" + (e.timeMs() / 3_600_000L) + "|" + e.path(), 1L))
        .groupByKey(Grouped.with(Serdes.String(), Serdes.Long()))
        .aggregate(
            () -> 0L,
            (k, one, sum) -> {
              pathCounted.incrementAndGet();
              return sum + one;
            },
            Materialized.<String, Long, KeyValueStore<Bytes, byte[]>>as("site-hour-path")
                .withKeySerde(Serdes.String())
                .withValueSerde(Serdes.Long()));

    KafkaStreams streams = new KafkaStreams(b.build(), p);
    streams.setUncaughtExceptionHandler(
        err -> {
          System.err.println("kafka-streams peer: " + err);
          System.exit(1);
          return null;
        });
    streams.start();
    long deadline = t0 + timeoutMs * 1_000_000L;
    while (minuteCounted.get() < expect || pathCounted.get() < expect) {
      if (System.nanoTime() > deadline) {
        System.err.printf(
            "kafka-streams peer: counted %d / %d of %d records within %d ms%n",
            minuteCounted.get(), pathCounted.get(), expect, timeoutMs);
        System.exit(1);
      }
      Thread.sleep(20);
    }
    long done = System.nanoTime();
    streams.close();
    long closed = System.nanoTime();
    // CPU time of the whole JVM (every thread: stream thread, RocksDB, producer, GC, JIT).
    long cpuNs =
        ((com.sun.management.OperatingSystemMXBean)
                java.lang.management.ManagementFactory.getOperatingSystemMXBean())
            .getProcessCpuTime();
    System.out.printf(
        "{\"records\":%d,\"counted\":[%d,%d],\"guarantee\":\"%s\",\"firstRecordMs\":%.3f,\"doneMs\":%.3f,\"closedMs\":%.3f,\"cpuMs\":%.3f}%n",
        expect,
        minuteCounted.get(),
        pathCounted.get(),
        guarantee,
        (first.get() - t0) / 1e6,
        (done - t0) / 1e6,
        (closed - t0) / 1e6,
        cpuNs / 1e6);
    System.exit(0);
  }
}
