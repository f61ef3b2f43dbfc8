"""The review loop: label issues, a Label Studio project fed with needs-review tags, and its
decisions pulled back as corrections (docs/review.md)."""
