"""Questions asked of a finished study: ``query`` (probabilities, quantiles, flexibility at risk), ``summary``
(the headline, built once for the printout and the report), ``maps`` (figures), ``interactive`` (the
report's feeder map) and ``report`` (report.html).

Imports: ``study`` and below.
"""
