package demeter.testjob;

import java.io.Serializable;

/**
 * When every record of the job is due: the input timeline that a workload trace (or a constant
 * rate) prescribes, independent of how fast the job is.
 *
 * <p>The trace gives a rate (records per wall-clock second) for every trace second:
 * {@code values[s] * scale}. The timeline starts at wall-clock instant {@code anchorMillis} at
 * trace second {@code offset} and advances {@code speedup} trace seconds per wall-clock second, so
 * trace second {@code s} lasts {@code 1 / speedup} wall seconds and schedules
 * {@code values[s] * scale / speedup} records. Without an end the trace wraps around; with one,
 * nothing is scheduled from trace second {@code end} on.
 *
 * <p>Records are numbered 0, 1, 2, ... in due order across the whole job. Record {@code n} is due
 * at the instant the cumulative number of scheduled records reaches {@code n + 1}. Because the
 * schedule is a pure function of time, every source subtask, before and after a rescale or a
 * restart, agrees on it; what a subtask has emitted is checkpointed, so the backlog
 * (due − emitted) survives both.
 */
final class TraceSchedule implements Serializable {
    private static final long serialVersionUID = 1L;

    /** Records of one trace second: {@code values[s] * scale / speedup}. */
    private final double[] perSecond;
    /** {@code prefix[s]}: records of trace seconds {@code 0..s} (exclusive); length L + 1. */
    private final double[] prefix;
    private final double speedup;
    private final double offset;
    /** Trace second at which the schedule stops, or NaN to wrap around. */
    private final double end;
    private final long anchorMillis;
    /** Records scheduled before {@code offset}: subtracted so that record 0 is due at the anchor. */
    private final double base;

    TraceSchedule(int[] values, double scale, double speedup, double offset, double end, long anchorMillis) {
        if (values.length == 0) {
            throw new IllegalArgumentException("the trace is empty");
        }
        if (!(speedup > 0) || !(scale >= 0) || offset < 0) {
            throw new IllegalArgumentException("need --speedup > 0, --scale >= 0 and --trace-offset >= 0");
        }
        if (!Double.isNaN(end) && end <= offset) {
            throw new IllegalArgumentException("--trace-end must be after --trace-offset");
        }
        this.perSecond = new double[values.length];
        this.prefix = new double[values.length + 1];
        for (int s = 0; s < values.length; s++) {
            perSecond[s] = Math.max(0, values[s]) * scale / speedup;
            prefix[s + 1] = prefix[s] + perSecond[s];
        }
        this.speedup = speedup;
        this.offset = offset;
        this.end = end;
        this.anchorMillis = anchorMillis;
        this.base = cumulative(offset);
    }

    /** A constant rate in records per wall-clock second from {@code anchorMillis} on. */
    static TraceSchedule constant(double ratePerSecond, long anchorMillis) {
        // One "trace second" per wall second, repeated forever.
        return new TraceSchedule(new int[] {1}, ratePerSecond, 1, 0, Double.NaN, anchorMillis);
    }

    long anchorMillis() {
        return anchorMillis;
    }

    /** Total records/s at a wall-clock instant (0 before the anchor and after the end). */
    double rateAt(long nowMillis) {
        double t = traceTime(nowMillis);
        if (nowMillis < anchorMillis || (!Double.isNaN(end) && t >= end)) {
            return 0;
        }
        int L = perSecond.length;
        int s = (int) (((long) Math.floor(t)) % L);
        return perSecond[s] * speedup;
    }

    /** Records scheduled in total (over all splits) up to {@code nowMillis}. */
    long dueCount(long nowMillis) {
        if (nowMillis <= anchorMillis) {
            return 0;
        }
        double t = traceTime(nowMillis);
        if (!Double.isNaN(end) && t > end) {
            t = end;
        }
        return (long) Math.floor(cumulative(t) - base + 1e-9);
    }

    /** Records of the whole schedule, or -1 if it wraps around forever. */
    long totalCount() {
        if (Double.isNaN(end)) {
            return -1;
        }
        return (long) Math.floor(cumulative(end) - base + 1e-9);
    }

    /**
     * Wall-clock instant (ms, fractional) at which record {@code n} is due, or +infinity if the
     * schedule ends before it.
     */
    double dueMillis(long n) {
        double target = base + n + 1;
        double total = prefix[prefix.length - 1];
        if (total <= 0) {
            return Double.POSITIVE_INFINITY;
        }
        // Whole periods first (wrap-around), then a binary search within one period.
        double periods = Math.floor(target / total);
        double rest = target - periods * total;
        if (rest <= 0 && periods > 0) {
            periods -= 1;
            rest += total;
        }
        // The smallest j with prefix[j] >= rest; second j - 1 has records (prefix[j - 1] < rest).
        int lo = 1;
        int hi = perSecond.length;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (prefix[mid] >= rest) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        int s = lo - 1;
        double within = perSecond[s] > 0 ? (rest - prefix[s]) / perSecond[s] : 0;
        double t = periods * perSecond.length + s + Math.min(1, Math.max(0, within));
        if (!Double.isNaN(end) && t > end + 1e-9) {
            return Double.POSITIVE_INFINITY;
        }
        return anchorMillis + (t - offset) * 1000.0 / speedup;
    }

    /** Trace second at a wall-clock instant. */
    private double traceTime(long nowMillis) {
        return offset + Math.max(0, nowMillis - anchorMillis) * speedup / 1000.0;
    }

    /** Records of trace seconds [0, t), counting whole periods for a wrap-around. */
    private double cumulative(double t) {
        int L = perSecond.length;
        double total = prefix[L];
        double periods = Math.floor(t / L);
        double within = t - periods * L;
        int s = (int) Math.floor(within);
        if (s >= L) {
            s = L - 1;
        }
        return periods * total + prefix[s] + (within - s) * perSecond[s];
    }
}
