/*
 * Deaggregates Kinesis records exactly as a KCL 2.x consumer does, with KCL's own
 * software.amazon.kinesis.retrieval.AggregatorUtil (amazon-kinesis-client 2.6.0).
 * Built and run by tools/kcl/__init__.py; the classpath is tools/kcl/pom.xml.
 *
 * stdin, one Kinesis record per line, tab-separated, in read order, grouped by shard:
 *   shardId  startingHashKey  endingHashKey  sequenceNumber  base64(partitionKey utf-8)  base64(data)
 * (hash keys in decimal). The records of a run of lines with the same shard and range are
 * deaggregated with one call of deaggregate(records, startingHashKey, endingHashKey), as
 * KCL does for each GetRecords batch of a shard (records are deaggregated independently,
 * so the batching does not change the result). A GetRecords record carries no explicit
 * hash key: KCL reads the user records' ones from the aggregate itself.
 *
 * stdout, one line per user record KCL yields, in order:
 *   shardId  sequenceNumber  subSequenceNumber  base64(partitionKey utf-8)  base64(data)
 *   aggregated(0|1)  explicitHashKey (decimal, or empty)
 *
 * Exit status 0 on success; 2 on a malformed input line; anything KCL throws ends the JVM
 * with its stack trace on stderr.
 */

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;

import software.amazon.kinesis.retrieval.AggregatorUtil;
import software.amazon.kinesis.retrieval.KinesisClientRecord;

public final class KclDeaggregate {
    private static final int FIELDS = 6;

    private final AggregatorUtil aggregatorUtil = new AggregatorUtil();
    private final Writer out;
    private final List<KinesisClientRecord> batch = new ArrayList<>();
    private String shardId;
    private String startingHashKey;
    private String endingHashKey;

    private KclDeaggregate(Writer out) {
        this.out = out;
    }

    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(
                new InputStreamReader(System.in, StandardCharsets.UTF_8), 1 << 16);
        Writer out = new BufferedWriter(
                new OutputStreamWriter(System.out, StandardCharsets.UTF_8), 1 << 16);
        KclDeaggregate reader = new KclDeaggregate(out);
        String line;
        long lineNumber = 0;
        while ((line = in.readLine()) != null) {
            lineNumber++;
            if (line.isEmpty()) {
                continue;
            }
            String[] fields = line.split("\t", -1);
            if (fields.length != FIELDS) {
                System.err.println("line " + lineNumber + ": expected " + FIELDS
                        + " tab-separated fields, got " + fields.length);
                System.exit(2);
            }
            reader.add(fields);
        }
        reader.flush();
        out.flush();
    }

    private void add(String[] fields) throws IOException {
        if (!fields[0].equals(shardId) || !fields[1].equals(startingHashKey)
                || !fields[2].equals(endingHashKey)) {
            flush();
            shardId = fields[0];
            startingHashKey = fields[1];
            endingHashKey = fields[2];
        }
        Base64.Decoder decoder = Base64.getDecoder();
        batch.add(KinesisClientRecord.builder()
                .sequenceNumber(fields[3])
                .partitionKey(new String(decoder.decode(fields[4]), StandardCharsets.UTF_8))
                .data(ByteBuffer.wrap(decoder.decode(fields[5])))
                .build());
    }

    private void flush() throws IOException {
        if (batch.isEmpty()) {
            return;
        }
        List<KinesisClientRecord> userRecords = aggregatorUtil.deaggregate(
                batch, new BigInteger(startingHashKey), new BigInteger(endingHashKey));
        Base64.Encoder encoder = Base64.getEncoder();
        for (KinesisClientRecord record : userRecords) {
            // What a record processor reads: the buffer's remaining bytes.
            ByteBuffer data = record.data().duplicate();
            byte[] bytes = new byte[data.remaining()];
            data.get(bytes);
            out.write(shardId);
            out.write('\t');
            out.write(record.sequenceNumber());
            out.write('\t');
            out.write(Long.toString(record.subSequenceNumber()));
            out.write('\t');
            out.write(encoder.encodeToString(record.partitionKey().getBytes(StandardCharsets.UTF_8)));
            out.write('\t');
            out.write(encoder.encodeToString(bytes));
            out.write('\t');
            out.write(record.aggregated() ? '1' : '0');
            out.write('\t');
            out.write(record.explicitHashKey() == null ? "" : record.explicitHashKey());
            out.write('\n');
        }
        batch.clear();
    }
}
