// A real HDFS for Strata's tests: Hadoop's MiniDFSCluster (one namenode, N datanodes, all in
// this JVM) on 127.0.0.1. testkit/src/hdfs.rs starts it and waits for the READY line.
//
//   java -cp minidfs.jar:lib/* dev.strata.MiniDfs --dir D [--port N] [--datanodes N]
//       [--block-size BYTES] [--datanode-port N] [--datanode-hostname HOST]
//
// The benchmark puts the cluster behind a delaying link: the datanode listens on
// 127.0.0.1:<datanode-port> and calls itself <datanode-hostname> (a proxy's address on the same
// port), and clients with `dfs.client.use.datanode.hostname` stream blocks through the proxy.
//
// Prints `MINIDFS READY hdfs://127.0.0.1:<port>` on stdout once the cluster is active, then runs
// until stdin closes or SIGTERM, and shuts the cluster down.
package dev.strata;

import java.io.File;
import java.io.IOException;
import java.io.PrintStream;
import java.util.concurrent.CountDownLatch;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

import sun.misc.Signal;

public final class MiniDfs {
    private static final String USAGE =
        "usage: MiniDfs --dir DIR [--port N (0: any)] [--datanodes N (default 1)] "
            + "[--block-size BYTES (default 1 MiB)] [--datanode-port N (0: any)] "
            + "[--datanode-hostname HOST (default 127.0.0.1)]";

    // 1 MiB, the namenode's smallest allowed block, by default: a test file of a few MiB spans
    // several blocks, so reads and writes cross block boundaries without large data.
    private static final long BLOCK_SIZE = 1024 * 1024;

    public static void main(String[] args) throws Exception {
        Options options = Options.parse(args);

        // Hadoop prints to stdout in places; keep the real stdout for the READY line alone.
        PrintStream ready = System.out;
        System.setOut(System.err);

        MiniDFSCluster cluster = start(options);
        CountDownLatch stop = new CountDownLatch(1);
        // Shut down on a plain thread, not in a JVM shutdown hook: Hadoop's shutdown removes
        // hooks of its own, which throws once the JVM is shutting down and leaves it half done.
        Signal.handle(new Signal("TERM"), signal -> stop.countDown());
        Thread stdin = new Thread(() -> {
            // Whoever started us holds stdin open while it needs the cluster; input is ignored.
            try {
                while (System.in.read() != -1) {
                }
            } catch (IOException e) {
                // A broken stdin ends the run too.
            }
            stop.countDown();
        }, "minidfs-stdin");
        stdin.setDaemon(true);
        stdin.start();

        ready.println("MINIDFS READY hdfs://127.0.0.1:" + cluster.getNameNodePort());
        ready.flush();

        stop.await();
        cluster.shutdown();
        System.exit(0);
    }

    private static MiniDFSCluster start(Options options) throws IOException {
        Configuration conf = new HdfsConfiguration();
        // Tests write as whatever user runs them, anywhere in the tree.
        conf.setBoolean("dfs.permissions.enabled", false);
        conf.setLong("dfs.blocksize", options.blockSize);
        conf.setInt("dfs.replication", Math.min(options.datanodes, 3));
        conf.set("hadoop.tmp.dir", new File(options.dir, "tmp").getAbsolutePath());
        // Loopback only, ports chosen by the OS. The datanode's data-transfer address is the one
        // clients stream blocks to, so it must be reachable from the test process.
        conf.set("dfs.datanode.address", "127.0.0.1:" + options.datanodePort);
        conf.set("dfs.datanode.http.address", "127.0.0.1:0");
        conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
        conf.set("dfs.datanode.hostname", options.datanodeHostname);

        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf, options.dir)
            .nameNodePort(options.port)
            .nameNodeHttpPort(0)
            .numDataNodes(options.datanodes)
            // Use the addresses above rather than MiniDFSCluster's own choice.
            .checkDataNodeAddrConfig(true)
            .format(true)
            .build();
        cluster.waitActive();
        return cluster;
    }

    private static final class Options {
        File dir;
        int port = 0;
        int datanodes = 1;
        long blockSize = BLOCK_SIZE;
        int datanodePort = 0;
        String datanodeHostname = "127.0.0.1";

        static Options parse(String[] args) {
            Options options = new Options();
            for (int i = 0; i < args.length; i++) {
                String flag = args[i];
                if (i + 1 >= args.length) {
                    fail(flag + " needs a value");
                }
                String value = args[++i];
                switch (flag) {
                    case "--dir" -> options.dir = new File(value).getAbsoluteFile();
                    case "--port" -> options.port = number(flag, value, 0, 65535);
                    case "--datanodes" -> options.datanodes = number(flag, value, 1, 16);
                    case "--block-size" ->
                        options.blockSize = number(flag, value, 1024 * 1024, 1024 * 1024 * 1024);
                    case "--datanode-port" -> options.datanodePort = number(flag, value, 0, 65535);
                    case "--datanode-hostname" -> options.datanodeHostname = value;
                    default -> fail("unknown flag " + flag);
                }
            }
            if (options.dir == null) {
                fail("--dir is required");
            }
            return options;
        }

        private static int number(String flag, String value, int min, int max) {
            try {
                int n = Integer.parseInt(value);
                if (n >= min && n <= max) {
                    return n;
                }
            } catch (NumberFormatException e) {
                // Reported below with the allowed range.
            }
            fail(flag + " takes a number from " + min + " to " + max + ", not " + value);
            return 0;
        }

        private static void fail(String message) {
            System.err.println("MiniDfs: " + message + "\n" + USAGE);
            System.exit(2);
        }
    }
}
