"""The batch data path: plan, transform (in the sandbox), validate, write, publish, and the jobs that track it."""
