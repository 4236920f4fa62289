"""Optional copies of the published marts for tools that do not read DuckDB or Delta (BI tools)."""
