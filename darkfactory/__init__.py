"""darkfactory: the domain library of the software dark factory. It knows nothing of Temporal."""
