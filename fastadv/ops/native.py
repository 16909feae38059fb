def supports(device):
    return False
