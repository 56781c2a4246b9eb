#!/usr/bin/env python3
"""Writes data/co2/co2.csv from the Mauna Loa weekly CO2 series that statsmodels' wheel carries
(statsmodels.datasets.co2; nothing is downloaded).

    ~/.cache/tch-jacobian/torch-2.11.0/bin/python -m pip install statsmodels   # this script only
    ~/.cache/tch-jacobian/torch-2.11.0/bin/python data/co2/extract.py

Columns: date (ISO, the Saturday that ends the week, as statsmodels' index), decimal_year
(year + (day of year - 1) / days in that year), co2_ppm (as in statsmodels' co2.csv, one decimal).
The weeks without a value (NaN in statsmodels) are dropped: 2284 weeks, 59 missing, 2225 rows.
"""
import csv
import os

import statsmodels
from statsmodels.datasets import co2

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    data = co2.load_pandas().data["co2"]
    assert len(data) == 2284, len(data)
    rows = []
    for ts, v in data.items():
        if v != v:  # NaN: a week without data
            continue
        year = ts.year
        days = 366 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 365
        dec = year + (ts.day_of_year - 1) / days
        rows.append((ts.strftime("%Y-%m-%d"), f"{dec:.6f}", f"{v:.1f}"))
    assert len(rows) == 2225, len(rows)
    with open(os.path.join(HERE, "co2.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["date", "decimal_year", "co2_ppm"])
        w.writerows(rows)
    print(f"data/co2/co2.csv: {len(rows)} weeks, {rows[0][0]} .. {rows[-1][0]} (statsmodels {statsmodels.__version__})")


if __name__ == "__main__":
    main()
