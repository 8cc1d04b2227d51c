"""``jobkit --app tests.support.records_app``: the shipped actors and the cooperative one.

``jobkit jobs cancel`` reads an actor's cancel mode from the app it loads; the tests'
in-process worker declares the same actor on its own broker.
"""

import actors
from tests.support.cooperative import declare_patient

patient = declare_patient(actors.broker)
