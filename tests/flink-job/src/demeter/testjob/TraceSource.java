package demeter.testjob;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.ReaderOutput;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SourceSplit;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.core.io.InputStatus;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * A source that emits records exactly when a {@link TraceSchedule} says they are due, and never
 * drops one: when the job is slower than the schedule, the records that are due but not yet
 * emitted are a backlog, reported as the FLIP-33 {@code pendingRecords} gauge, and emitted as
 * fast as the job accepts them.
 *
 * <p>The schedule's records are spread over a fixed number of logical splits (record {@code n}
 * belongs to split {@code n mod splits}). A split's state is the number of its records emitted so
 * far; it is checkpointed with the reader, so after a restart or a rescale every split resumes at
 * its checkpointed position and no record is lost or emitted twice downstream (exactly-once with
 * aligned checkpoints). The splits must be at least the largest source parallelism, otherwise
 * some source subtasks idle.
 *
 * <p>Records are {@code (key, sequence number n, due time ms, payload)}; the payload is a
 * vehicle-position line like the CARS dataset's, derived from {@code n}.
 *
 * <p>Metrics of each source subtask: {@code pendingRecords} (due − emitted over its splits) and
 * {@code eventsIn} (records emitted over its splits, checkpointed: summed over the subtasks it is
 * the exact number of distinct records the job has taken in).
 */
final class TraceSource
        implements Source<Tuple4<Integer, Long, Long, String>, TraceSource.Split, List<TraceSource.Split>> {
    private static final long serialVersionUID = 1L;

    private final TraceSchedule schedule;
    private final int splits;
    private final int keys;

    TraceSource(TraceSchedule schedule, int splits, int keys) {
        if (splits < 1 || keys < 1) {
            throw new IllegalArgumentException("need --splits >= 1 and --keys >= 1");
        }
        this.schedule = schedule;
        this.splits = splits;
        this.keys = keys;
    }

    @Override
    public Boundedness getBoundedness() {
        return Boundedness.CONTINUOUS_UNBOUNDED;
    }

    @Override
    public SplitEnumerator<Split, List<Split>> createEnumerator(SplitEnumeratorContext<Split> context) {
        List<Split> all = new ArrayList<>();
        for (int i = 0; i < splits; i++) {
            all.add(new Split(i, 0));
        }
        return new Enumerator(context, all);
    }

    @Override
    public SplitEnumerator<Split, List<Split>> restoreEnumerator(
            SplitEnumeratorContext<Split> context, List<Split> checkpoint) {
        return new Enumerator(context, new ArrayList<>(checkpoint));
    }

    @Override
    public SimpleVersionedSerializer<Split> getSplitSerializer() {
        return new SplitSerializer();
    }

    @Override
    public SimpleVersionedSerializer<List<Split>> getEnumeratorCheckpointSerializer() {
        return new SplitListSerializer();
    }

    @Override
    public SourceReader<Tuple4<Integer, Long, Long, String>, Split> createReader(SourceReaderContext context) {
        return new Reader(context, schedule, splits, keys);
    }

    /** One logical split: its index and how many of its records were emitted. */
    static final class Split implements SourceSplit {
        final int index;
        final long emitted;

        Split(int index, long emitted) {
            this.index = index;
            this.emitted = emitted;
        }

        @Override
        public String splitId() {
            return "trace-" + index;
        }

        @Override
        public String toString() {
            return splitId() + "@" + emitted;
        }
    }

    /** Assigns split i to subtask i mod parallelism; returned splits go back to their subtask. */
    static final class Enumerator implements SplitEnumerator<Split, List<Split>> {
        private final SplitEnumeratorContext<Split> context;
        private final List<Split> unassigned;
        private final Map<Integer, List<Split>> returned = new HashMap<>();

        Enumerator(SplitEnumeratorContext<Split> context, List<Split> unassigned) {
            this.context = context;
            this.unassigned = unassigned;
        }

        @Override
        public void start() {}

        @Override
        public void handleSplitRequest(int subtaskId, String requesterHostname) {}

        @Override
        public void addSplitsBack(List<Split> splits, int subtaskId) {
            returned.computeIfAbsent(subtaskId, k -> new ArrayList<>()).addAll(splits);
        }

        @Override
        public void addReader(int subtaskId) {
            int parallelism = Math.max(1, context.currentParallelism());
            List<Split> mine = new ArrayList<>();
            List<Split> back = returned.remove(subtaskId);
            if (back != null) {
                mine.addAll(back);
            }
            for (Iterator<Split> it = unassigned.iterator(); it.hasNext(); ) {
                Split s = it.next();
                if (s.index % parallelism == subtaskId % parallelism) {
                    mine.add(s);
                    it.remove();
                }
            }
            for (Split s : mine) {
                context.assignSplit(s, subtaskId);
            }
        }

        @Override
        public List<Split> snapshotState(long checkpointId) {
            List<Split> state = new ArrayList<>(unassigned);
            for (List<Split> l : returned.values()) {
                state.addAll(l);
            }
            return state;
        }

        @Override
        public void close() {}
    }

    /** Emits the due records of its splits; waits on a timer until the next one is due. */
    static final class Reader implements SourceReader<Tuple4<Integer, Long, Long, String>, Split> {
        /** Records emitted per pollNext call at most, so that checkpoints and timers get a turn. */
        private static final int MAX_PER_POLL = 256;
        /** A record due within this many ms is emitted now (its timestamp stays exact). */
        private static final double EARLY_MS = 1.0;
        /** How often to look again once the schedule has ended. */
        private static final long IDLE_MS = 1000;
        private static final ScheduledExecutorService TIMER =
                Executors.newSingleThreadScheduledExecutor(runnable -> {
                    Thread thread = new Thread(runnable, "demeter-trace-source-timer");
                    thread.setDaemon(true);
                    return thread;
                });

        private final SourceReaderContext context;
        private final TraceSchedule schedule;
        private final int splitCount;
        private final int keys;
        /** Split index → records emitted; written by the task thread only. */
        private final Map<Integer, long[]> splits = new HashMap<>();
        private volatile CompletableFuture<Void> available = CompletableFuture.completedFuture(null);

        Reader(SourceReaderContext context, TraceSchedule schedule, int splitCount, int keys) {
            this.context = context;
            this.schedule = schedule;
            this.splitCount = splitCount;
            this.keys = keys;
        }

        @Override
        public void start() {
            context.metricGroup().setPendingRecordsGauge(this::pending);
            context.metricGroup().gauge("eventsIn", this::emitted);
        }

        /** Records of split {@code index} due by {@code due} records in total. */
        private long dueOf(int index, long due) {
            return due > index ? (due - index + splitCount - 1) / splitCount : 0;
        }

        private synchronized long pending() {
            long due = schedule.dueCount(System.currentTimeMillis());
            long sum = 0;
            for (Map.Entry<Integer, long[]> e : splits.entrySet()) {
                sum += Math.max(0, dueOf(e.getKey(), due) - e.getValue()[0]);
            }
            return sum;
        }

        private synchronized long emitted() {
            long sum = 0;
            for (long[] e : splits.values()) {
                sum += e[0];
            }
            return sum;
        }

        @Override
        public InputStatus pollNext(ReaderOutput<Tuple4<Integer, Long, Long, String>> output) {
            long now = System.currentTimeMillis();
            long due = schedule.dueCount((long) Math.floor(now + EARLY_MS));
            int sent = 0;
            double next = Double.POSITIVE_INFINITY;
            synchronized (this) {
                if (splits.isEmpty()) {
                    // No split (more subtasks than splits, or none assigned yet): addSplits wakes us.
                    available = new CompletableFuture<>();
                    return InputStatus.NOTHING_AVAILABLE;
                }
                // Round-robin over the splits, one record each per pass, so that a backlog drains
                // in (nearly) due order.
                boolean behind = true;
                while (behind && sent < MAX_PER_POLL) {
                    behind = false;
                    for (Map.Entry<Integer, long[]> e : splits.entrySet()) {
                        int index = e.getKey();
                        long[] emitted = e.getValue();
                        if (emitted[0] < dueOf(index, due)) {
                            long n = emitted[0] * splitCount + index;
                            long at = (long) Math.floor(schedule.dueMillis(n));
                            output.collect(record(n, at), at);
                            emitted[0]++;
                            sent++;
                            behind |= emitted[0] < dueOf(index, due);
                        }
                    }
                }
                if (behind) {
                    return InputStatus.MORE_AVAILABLE;
                }
                for (Map.Entry<Integer, long[]> e : splits.entrySet()) {
                    next = Math.min(next, schedule.dueMillis(e.getValue()[0] * splitCount + e.getKey()));
                }
            }
            CompletableFuture<Void> f = new CompletableFuture<>();
            available = f;
            long delay = Double.isInfinite(next) ? IDLE_MS : Math.max(0, (long) Math.ceil(next - EARLY_MS) - now);
            TIMER.schedule(() -> f.complete(null), Math.min(delay, IDLE_MS), TimeUnit.MILLISECONDS);
            return InputStatus.NOTHING_AVAILABLE;
        }

        private Tuple4<Integer, Long, Long, String> record(long n, long dueAt) {
            // A vehicle position like the CARS dataset's: id, speed km/h, latitude, longitude.
            long h = mix(n);
            int vehicle = (int) Long.remainderUnsigned(h, 100_000);
            long speedTenths = (h >>> 20 & 0xFFF) * 1300 / 4096;
            long lat = 48_000_000 + (h >>> 32 & 0xFFFF) * 15;
            long lon = 11_000_000 + (h >>> 48 & 0xFFFF) * 15;
            String payload = vehicle + "," + speedTenths / 10 + "." + speedTenths % 10 + "," + micro(lat) + ","
                    + micro(lon);
            return Tuple4.of(vehicle % keys, n, dueAt, payload);
        }

        /** {@code 48123456} → {@code "48.123456"}. */
        private static String micro(long v) {
            String frac = Long.toString(1_000_000 + v % 1_000_000).substring(1);
            return v / 1_000_000 + "." + frac;
        }

        private static long mix(long z) {
            z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
            z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
            return z ^ (z >>> 31);
        }

        @Override
        public synchronized List<Split> snapshotState(long checkpointId) {
            List<Split> state = new ArrayList<>();
            for (Map.Entry<Integer, long[]> e : splits.entrySet()) {
                state.add(new Split(e.getKey(), e.getValue()[0]));
            }
            return state;
        }

        @Override
        public CompletableFuture<Void> isAvailable() {
            return available;
        }

        @Override
        public void addSplits(List<Split> added) {
            synchronized (this) {
                for (Split s : added) {
                    splits.put(s.index, new long[] {s.emitted});
                }
            }
            available.complete(null);
        }

        @Override
        public void notifyNoMoreSplits() {}

        @Override
        public void close() {
            available.complete(null);
        }
    }

    static final class SplitSerializer implements SimpleVersionedSerializer<Split> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(Split split) throws IOException {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream(12);
            try (DataOutputStream out = new DataOutputStream(bytes)) {
                out.writeInt(split.index);
                out.writeLong(split.emitted);
            }
            return bytes.toByteArray();
        }

        @Override
        public Split deserialize(int version, byte[] serialized) throws IOException {
            try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(serialized))) {
                return new Split(in.readInt(), in.readLong());
            }
        }
    }

    static final class SplitListSerializer implements SimpleVersionedSerializer<List<Split>> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(List<Split> splits) throws IOException {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            try (DataOutputStream out = new DataOutputStream(bytes)) {
                out.writeInt(splits.size());
                for (Split s : splits) {
                    out.writeInt(s.index);
                    out.writeLong(s.emitted);
                }
            }
            return bytes.toByteArray();
        }

        @Override
        public List<Split> deserialize(int version, byte[] serialized) throws IOException {
            try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(serialized))) {
                int n = in.readInt();
                List<Split> splits = new ArrayList<>(n);
                for (int i = 0; i < n; i++) {
                    splits.add(new Split(in.readInt(), in.readLong()));
                }
                return splits;
            }
        }
    }
}
