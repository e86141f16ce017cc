# Glue Data Catalog tables over the history so Athena can query it. Partition projection: no crawler,
# no MSCK REPAIR; new days are queryable as soon as their objects exist.

locals {
  s3_root    = "s3://${aws_s3_bucket.data.id}/"
  year_range = "${var.history_first_year},${var.history_last_year}"

  # One JSON object per line (crypto/03-price-changes/.../<slot>/pairs.jsonl): every pair's entry of the
  # window (ledger.pair_entry), each rule's decision in `rules`. Fields an entry lacks read as NULL, extra
  # fields are ignored, so this list can grow with them.
  price_struct = "struct<timestamp:string,weighted_average:double,source_key:string>"
  rule_struct = join("", [
    "struct<kind:string,decision:string,reason:string,direction:string,change_pct:double,",
    "reference:${local.price_struct},threshold_pct:double,minutes:int,level:double,sns_message_id:string,",
    "suppressed_by:string>",
  ])
  ledger_columns = [
    { name = "window_start", type = "string" },
    { name = "window_end", type = "string" },
    { name = "pair", type = "string" },
    { name = "latest", type = local.price_struct },
    { name = "rules", type = "map<string,${local.rule_struct}>" },
    { name = "decision", type = "string" },
  ]

  # The Parquet copy stores the slot as a UTC timestamp (parquet.parquet_schema), the CSV as text.
  parquet_columns = [
    for column in local.canonical_columns :
    column.name == "timestamp" ? { name = column.name, type = "timestamp" } : column
  ]
}

resource "aws_glue_catalog_database" "history" {
  name        = var.catalog_database_name
  description = "${var.project}: canonical records, their Parquet copy and the price-change ledger"
}

resource "aws_glue_catalog_table" "analysis_csv" {
  name          = "analysis_csv"
  database_name = aws_glue_catalog_database.history.name
  description   = "Canonical records, one CSV with a header per 5-minute window, a row per pair (written by the Glue job)"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    "classification"            = "csv"
    "skip.header.line.count"    = "1"
    "projection.enabled"        = "true"
    "projection.year.type"      = "integer"
    "projection.year.range"     = local.year_range
    "projection.month.type"     = "integer"
    "projection.month.range"    = "1,12"
    "projection.month.digits"   = "2"
    "projection.day.type"       = "integer"
    "projection.day.range"      = "1,31"
    "projection.day.digits"     = "2"
    "storage.location.template" = "${local.s3_root}${var.analysis_prefix}year=$${year}/month=$${month}/day=$${day}/"
  }

  partition_keys {
    name = "year"
    type = "string"
  }
  partition_keys {
    name = "month"
    type = "string"
  }
  partition_keys {
    name = "day"
    type = "string"
  }

  storage_descriptor {
    location      = "${local.s3_root}${var.analysis_prefix}"
    input_format  = "org.apache.hadoop.mapred.TextInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.serde2.OpenCSVSerde"
      parameters = {
        "separatorChar" = ","
        "quoteChar"     = "\""
        "escapeChar"    = "\\"
      }
    }

    dynamic "columns" {
      for_each = local.canonical_columns
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}

# Every pair's months (layout.parquet_key): pair is its slug BASE_QUOTE, e.g. WHERE pair = 'BTC_USDT'.
resource "aws_glue_catalog_table" "analysis_parquet" {
  name          = "analysis_parquet"
  database_name = aws_glue_catalog_database.history.name
  description   = "Canonical records compacted to Parquet, one prefix per pair and month"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    "classification"            = "parquet"
    "projection.enabled"        = "true"
    "projection.pair.type"      = "enum"
    "projection.pair.values"    = join(",", local.pair_slugs)
    "projection.year.type"      = "integer"
    "projection.year.range"     = local.year_range
    "projection.month.type"     = "integer"
    "projection.month.range"    = "1,12"
    "projection.month.digits"   = "2"
    "storage.location.template" = "${local.s3_root}${local.parquet_prefix}pair=$${pair}/year=$${year}/month=$${month}/"
  }

  partition_keys {
    name = "pair"
    type = "string"
  }
  partition_keys {
    name = "year"
    type = "string"
  }
  partition_keys {
    name = "month"
    type = "string"
  }

  storage_descriptor {
    location      = "${local.s3_root}${local.parquet_prefix}"
    input_format  = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    }

    dynamic "columns" {
      for_each = local.parquet_columns
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}

resource "aws_glue_catalog_table" "price_changes" {
  name          = "price_changes"
  database_name = aws_glue_catalog_database.history.name
  description   = "Price-change ledger: every pair's entries, one JSON object per line"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    "classification"            = "json"
    "projection.enabled"        = "true"
    "projection.year.type"      = "integer"
    "projection.year.range"     = local.year_range
    "projection.month.type"     = "integer"
    "projection.month.range"    = "1,12"
    "projection.month.digits"   = "2"
    "projection.day.type"       = "integer"
    "projection.day.range"      = "1,31"
    "projection.day.digits"     = "2"
    "storage.location.template" = "${local.s3_root}${var.changes_prefix}year=$${year}/month=$${month}/day=$${day}/"
  }

  partition_keys {
    name = "year"
    type = "string"
  }
  partition_keys {
    name = "month"
    type = "string"
  }
  partition_keys {
    name = "day"
    type = "string"
  }

  storage_descriptor {
    location      = "${local.s3_root}${var.changes_prefix}"
    input_format  = "org.apache.hadoop.mapred.TextInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"

    ser_de_info {
      serialization_library = "org.openx.data.jsonserde.JsonSerDe"
      parameters = {
        "ignore.malformed.json" = "true"
      }
    }

    dynamic "columns" {
      for_each = local.ledger_columns
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}
