"""The counts behind ``--report``: what each snapshot would send, per segment."""
