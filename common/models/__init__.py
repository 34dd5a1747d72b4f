"""Model files (MediaPipe tasks, STCNN weights): declared once, verified on every load."""
