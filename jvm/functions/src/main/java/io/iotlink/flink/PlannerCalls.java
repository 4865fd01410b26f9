package io.iotlink.flink;

import java.lang.reflect.InvocationTargetException;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.table.api.Schema;
import org.apache.flink.table.api.Table;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.bridge.java.StreamStatementSet;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;
import org.apache.flink.table.api.internal.TableEnvironmentImpl;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.types.Row;

/**
 * The Table API calls that optimize a plan, made safe on whichever thread serves them.
 *
 * <p>Calcite keeps the planner's metadata provider in a thread-local ({@code
 * RelMetadataQueryBase.THREAD_PROVIDERS}) that is set only on the thread that created the table
 * environment; optimizing on any other thread fails with "NullPointerException:
 * metadataHandlerProvider" (FLINK-23020, not fixed in Flink 2.0). Py4J serves a Python thread's
 * calls from a pool of Java threads, and the pool hands the job's thread another one whenever a
 * second Python thread (a bridge, a sink, a garbage-collected Java reference) used the gateway at
 * the same moment. Each method here sets the provider on its own thread first, in the same call, so
 * no other Py4J call can come in between.
 */
public final class PlannerCalls {

    private PlannerCalls() {}

    /** {@link StreamTableEnvironment#toChangelogStream(Table, Schema, ChangelogMode)} on any thread. */
    public static DataStream<Row> toChangelogStream(
            StreamTableEnvironment tableEnv, Table table, Schema schema, ChangelogMode mode) {
        setMetadataProvider(tableEnv);
        return tableEnv.toChangelogStream(table, schema, mode);
    }

    /** {@link StreamTableEnvironment#toDataStream(Table)} on any thread. */
    public static DataStream<Row> toDataStream(StreamTableEnvironment tableEnv, Table table) {
        setMetadataProvider(tableEnv);
        return tableEnv.toDataStream(table);
    }

    /** {@link StreamStatementSet#attachAsDataStream()} on any thread. */
    public static void attachAsDataStream(StreamTableEnvironment tableEnv, StreamStatementSet statements) {
        setMetadataProvider(tableEnv);
        statements.attachAsDataStream();
    }

    /**
     * Gives the calling thread the planner's metadata provider, as Calcite's {@code
     * RelOptCluster.setMetadataProvider} does for the thread that creates the planner.
     *
     * <p>By reflection: the planner and Calcite live in the planner loader's own class loader.
     */
    public static void setMetadataProvider(TableEnvironment tableEnv) {
        ClassLoader planner = ((TableEnvironmentImpl) tableEnv).getPlanner().getClass().getClassLoader();
        try {
            Class<?> queryBase = Class.forName("org.apache.calcite.rel.metadata.RelMetadataQueryBase", true, planner);
            @SuppressWarnings("unchecked")
            ThreadLocal<Object> providers = (ThreadLocal<Object>) queryBase.getField("THREAD_PROVIDERS").get(null);
            if (providers.get() != null) {
                return;
            }
            Object flinkProvider = Class.forName(
                            "org.apache.flink.table.planner.plan.metadata.FlinkDefaultRelMetadataProvider", true, planner)
                    .getMethod("INSTANCE")
                    .invoke(null);
            Class<?> providerType = Class.forName("org.apache.calcite.rel.metadata.RelMetadataProvider", true, planner);
            Object janino = Class.forName("org.apache.calcite.rel.metadata.JaninoRelMetadataProvider", true, planner)
                    .getMethod("of", providerType)
                    .invoke(null, flinkProvider);
            providers.set(janino);
        } catch (ReflectiveOperationException e) {
            Throwable cause = e instanceof InvocationTargetException ? e.getCause() : e;
            throw new IllegalStateException("cannot set the planner's metadata provider on this thread: " + cause, cause);
        }
    }
}
