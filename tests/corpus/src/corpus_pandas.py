"""pandas for the corpus: read a CSV from the current directory, aggregate, write one."""

import pandas as pd


def main():
    sales = pd.read_csv("sales.csv", parse_dates=["day"])
    summary = sales.groupby("region", as_index=False)["amount"].sum().sort_values("region")
    summary.to_csv("summary.csv", index=False)
    print("pandas", " ".join(f"{r}={a}" for r, a in summary.itertuples(index=False)),
          "days", sales["day"].dt.day.nunique())
    return 0
