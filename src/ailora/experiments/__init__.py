"""Many runs at once: sweeps (lr chosen on validation, mean and spread over seeds), their presets,
and the Markdown/HTML reports built from run records."""
