"""Spark: the columnar copies of an auditgate archive as the auditgate_records view.

    spark-submit spark.py ARCHIVE_ROOT        (ARCHIVE/PREFIX for a directory archive,
                                               s3a://BUCKET/PREFIX with hadoop-aws for S3)

Then run questions-spark.sql (with its placeholders replaced) through spark.sql(...).
"""
import sys

from pyspark.sql import SparkSession


def auditgate_records(spark, root):
    """Register and return the auditgate_records view over ROOT/v1/columnar."""
    records = spark.read.parquet(f"{root}/v1/columnar")
    records.createOrReplaceTempView("auditgate_records")
    # The JSON segments, for reading records exactly as the journal holds them.
    journal = spark.read.option("basePath", f"{root}/v1").json(
        f"{root}/v1/node=*/dt=*/*.jsonl.zst")
    journal.createOrReplaceTempView("auditgate_journal")
    return records


if __name__ == "__main__":
    spark = (SparkSession.builder.appName("auditgate")
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    auditgate_records(spark, sys.argv[1])
    spark.sql("SELECT node, dt, count(*) AS records FROM auditgate_records "
              "GROUP BY node, dt ORDER BY node, dt").show()
