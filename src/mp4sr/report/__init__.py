"""Reports of runs and experiments: Markdown tables (and plots, where matplotlib is installed)."""

from mp4sr.report.run import metrics_markdown, write_run_report

__all__ = ["metrics_markdown", "write_run_report"]
