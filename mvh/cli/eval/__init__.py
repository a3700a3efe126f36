"""`mvh eval ...`: one module per evaluation."""
